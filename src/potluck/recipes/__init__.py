"""Recipes: what to train. A recipe builds the model, the data, the loss and the optimizer.

The replica loop owns *how* to train (which samples, weighting, the sync, commits); a
:class:`Recipe` owns *what*. Built-in recipes are registered by model name; a new one is a
class with the methods below plus one :func:`register_recipe` call, with no change to the
replica loop::

    @register_recipe("my_model")
    class MyRecipe(Recipe):
        def model(self, ctx): ...
        def data(self, ctx): ...
"""

from potluck.recipes import builtin as _builtin  # noqa: F401  (registers the built-ins)
from potluck.recipes import language as _language  # noqa: F401
from potluck.recipes.base import (
    Batch,
    Recipe,
    RecipeContext,
    TensorData,
    TokenLoss,
    TrainData,
    check_spec,
    recipe_for,
    register_recipe,
    registered_recipes,
)

__all__ = ["Batch", "Recipe", "RecipeContext", "TensorData", "TokenLoss", "TrainData", "check_spec",
           "recipe_for", "register_recipe", "registered_recipes"]
