"""edgebind proto."""
