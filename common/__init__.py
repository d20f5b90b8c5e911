"""edgebind's learning library: modalities, data, towers, losses, binding, growth.

Nothing here imports Flower, MQTT, gRPC or a database library
(``tests/test_layers.py`` checks every import statement). The SQL plumbing the
node and coordinator stores share is ``node_agent.sqlbase``.
"""
