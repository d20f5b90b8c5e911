"""edgebind node_agent."""
