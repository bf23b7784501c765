"""Everything a model is, shared by serving and training: preprocessing, networks, labels, packages.

Nothing here imports the node or storage, and nothing here touches the network.
"""
