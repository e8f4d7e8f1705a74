"""actors/coordinator package."""
