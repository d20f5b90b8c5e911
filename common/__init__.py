"""edgebind's learning library: modalities, data, towers, losses, binding, growth.

Nothing here imports Flower, MQTT or a database: node agents, the coordinator
and the simulations all build on it.
"""
