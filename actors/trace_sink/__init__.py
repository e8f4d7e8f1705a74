"""actors/trace_sink package."""
