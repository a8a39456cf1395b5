"""A hospital's deployable: the Flower ClientApp entry."""
