"""actors/model_runtime package."""
