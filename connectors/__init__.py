"""Sources of Readings. Each connector imports only agent.core.model, agent.core.errors and agent.core.clock."""
