"""Training and evaluation of the model family; exports model packages the node serves."""
