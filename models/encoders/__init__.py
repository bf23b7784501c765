"""Image and text encoders: the two branches a classifier fuses."""
