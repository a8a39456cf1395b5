"""The consortium's deployable: the Flower ServerApp entry."""
