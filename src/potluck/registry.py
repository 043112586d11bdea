"""A named registry of plug-ins (recipes, sync strategies): register by decorator, look up
by name with an error that lists what exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, error: type[Exception]) -> None:
        """``error`` (a ConfigError subclass, in practice) is raised for an unknown name."""
        self.what = what
        self.error = error
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")`` on a class or factory."""

        def add(item: T) -> T:
            self._items[name] = item
            return item

        return add

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def get(self, name: str) -> T:
        """The item called ``name``. Raises ``error`` naming the known ones."""
        if name not in self._items:
            raise self.error(f"unknown {self.what} {name!r}: choose one of {', '.join(self._items)}")
        return self._items[name]
