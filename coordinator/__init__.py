"""edgebind coordinator."""
