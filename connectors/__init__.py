"""Sources of Readings. Each connector imports only agent.model, agent.errors and agent.clock."""
