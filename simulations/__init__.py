"""edgebind simulations."""
