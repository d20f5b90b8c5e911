"""edgebind's learning library: modalities, data, towers, losses, binding, growth.

Nothing here imports Flower or MQTT. The one module that imports a database
library is ``common.sqlbase``, the engine plumbing the node and coordinator
stores share; the learning code never imports it.
"""
