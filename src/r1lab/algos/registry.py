"""A tiny name -> function registry shared by the algorithm tables."""

from __future__ import annotations

from typing import Callable, TypeVar

from r1lab.errors import ConfigError

F = TypeVar("F", bound=Callable)


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self[name] = fn
            return fn

        return deco

    def get_or_raise(self, name: str) -> Callable:
        if name not in self:
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self))})")
        return self[name]
