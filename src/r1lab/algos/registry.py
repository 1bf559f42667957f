"""Name -> function tables for the algorithm pieces, and the binding of each method's own
hyper-parameters.

A registered function's signature says what it takes:

- positional parameters are the tensors every member of its table receives;
- keyword-only parameters named in the table's `context` are inputs the trainer supplies when the
  function declares them (a critic's values, the KL penalty of the reward, the discount);
- every other keyword-only parameter is a hyper-parameter of the method, with its default and,
  where a value can be out of place, its domain (`domains={"clip_eps_low": Domain(ge=0, lt=1)}`).

`bind` checks a config's settings against those hyper-parameters and fixes them once, so a setting
the method does not take is an error naming it, never silently dropped, and a value out of its
domain is an error naming it too. `traits` records what a method needs from the loop (a critic,
old-policy log-probs, groups of samples per prompt, a fixed loss aggregation), so the loop and the
config checks read flags instead of method names.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from r1lab.domains import Domain
from r1lab.errors import ConfigError

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    hparams: dict[str, Any]  # hyper-parameter -> default, from the signature
    context: tuple[str, ...]  # the table's context inputs this function declares
    traits: dict[str, Any] = field(default_factory=dict)
    domains: dict[str, Domain] = field(default_factory=dict)  # hyper-parameter -> the values it may take

    def trait(self, key: str, default: Any = None) -> Any:
        return self.traits.get(key, default)


class Registry(dict):
    """name -> function (so `table[name](...)` calls the method with its defaults), plus each
    method's `Method` record in `.methods`."""

    def __init__(self, kind: str, context: tuple[str, ...] = ()):
        super().__init__()
        self.kind = kind
        self.context = context
        self.methods: dict[str, Method] = {}

    def register(self, name: str, domains: Mapping[str, Domain] | None = None, **traits: Any) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            params = inspect.signature(fn).parameters.values()
            if any(p.kind is p.VAR_KEYWORD for p in params):
                raise TypeError(f"{self.kind} '{name}': **kwargs would hide unknown settings; name each one")
            kw_only = [p for p in params if p.kind is p.KEYWORD_ONLY]
            hparams = {p.name: p.default for p in kw_only if p.name not in self.context}
            missing = [h for h, d in hparams.items() if d is inspect.Parameter.empty]
            if missing:
                raise TypeError(f"{self.kind} '{name}': hyper-parameters need defaults: {', '.join(missing)}")
            strays = sorted(set(domains or {}) - set(hparams))
            if strays:
                raise TypeError(f"{self.kind} '{name}': domains of settings it does not take: {', '.join(strays)}")
            context = tuple(p.name for p in kw_only if p.name in self.context)
            self[name] = fn
            self.methods[name] = Method(name, fn, hparams, context, dict(traits), dict(domains or {}))
            return fn

        return deco

    def get_or_raise(self, name: str) -> Callable:
        return self.method(name).fn

    def method(self, name: str) -> Method:
        if name not in self.methods:
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self.methods))})")
        return self.methods[name]

    def bind(self, name: str, settings: Mapping[str, Any] | None = None, where: str = "") -> Callable:
        """The method with its hyper-parameters fixed from `settings` (unset ones keep their
        defaults). A key the method does not take is a ConfigError naming `where`.key."""
        method = self.method(name)
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(method.hparams))
        if unknown:
            takes = ", ".join(sorted(method.hparams)) or "no settings"
            raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: {self.kind} '{name}' does not take "
                              f"'{unknown[0]}' (it takes: {takes})")
        bound = {}
        for key, value in settings.items():
            here = f"{where + '.' if where else ''}{key}"
            bound[key] = _coerce_like(value, method.hparams[key], here)
            if key in method.domains:
                method.domains[key].check(bound[key], here)
        return functools.partial(method.fn, **bound) if bound else method.fn


def _coerce_like(value: Any, default: Any, where: str) -> Any:
    """A setting converted to its default's type, where that is lossless."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(default, int) and not isinstance(default, bool) and number.is_integer():
            return int(number)
        return number
    return value
