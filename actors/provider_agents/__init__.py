"""actors/provider_agents package."""
