"""potluck: pool a group's mixed machines into one cluster and train on all of them at once."""

__version__ = "0.1.0"
