"""Typed per-plugin runtime state (the idea of pytest's ``Stash``).

A plugin keeps its clients and workers here instead of on an attribute bag::

    GRAPH = StashKey[GraphClient]("whatsapp.graph")
    host.stash[GRAPH] = GraphClient(...)
    client = host.stash[GRAPH]          # typed as GraphClient
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

__all__ = ["Stash", "StashKey"]

T = TypeVar("T")


class StashKey(Generic[T]):
    """A typed key; create one per value at module level."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})"


class Stash:
    """A mapping from :class:`StashKey` to values of the key's type."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        try:
            return cast(T, self._data[key])
        except KeyError:
            raise KeyError(f"{key.name} is not set: is the plugin that provides it enabled?") from None

    def get(self, key: StashKey[T], default: T | None = None) -> T | None:
        """The value, or ``default``."""
        return cast("T | None", self._data.get(key, default))

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __delitem__(self, key: StashKey[Any]) -> None:
        del self._data[key]
