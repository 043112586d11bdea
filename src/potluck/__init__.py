"""potluck: pool a group's mixed machines into one cluster and train on all of them at once."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``potluck.TokenLoss`` for job files, without importing torch when the CLI starts.
    if name == "TokenLoss":
        from potluck.recipes.base import TokenLoss

        return TokenLoss
    raise AttributeError(f"module 'potluck' has no attribute {name!r}")
