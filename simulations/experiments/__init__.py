"""Central (non-federated) experiments: MMBind and Babel on real data."""
