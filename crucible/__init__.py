"""crucible package."""
