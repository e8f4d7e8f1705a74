"""actors/role_injector package."""
