"""The domain of a setting: which values it may take, declared on the field it belongs to.

    steps: int = setting(150, ge=1)                              # a count
    top_p: float = setting(1.0, gt=0, le=1)                      # a probability that cannot be 0
    common_items: int = setting(3, ge=2, off=0)                  # 0 = off, else at least 2
    advantage: str = setting("grpo", choices="r1lab.algos:ADVANTAGES")   # a registry, looked up when checked
    tasks: list[str] = setting(["arithmetic"], nonempty=True, choices="r1lab.tasks:TASKS")   # each item
    schedule: dict[int, int] = setting({}, keys=Domain(ge=0), ge=8)      # each key, each value
    train_path: str = setting("", path="file")                   # "" or an existing file

A range applies to a number, to each item of a list and to each value of a mapping. A value out
of its domain is one line naming the setting, the value and what it may be:
`train.group_size=0: expected an integer >= 1`.

A leaf: it imports nothing of r1lab but errors, so the config and the algorithm registries (whose
methods declare the domains of their own hyper-parameters) can both use it. Registries live above
the config, so `choices` may name one as "module:NAME"; it is imported only when a value is checked.
A registry may also accept names it does not list, made on demand (the task families `rg:<dataset>`
of reasoning-gym): it then has `makes(name) -> bool` and `name_problem(name) -> str | None`, and
judges those names itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from pathlib import Path
from typing import Any

from r1lab.errors import ConfigError

_UNSET = object()


@dataclasses.dataclass(frozen=True)
class Domain:
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None
    lt: float | None = None
    off: Any = _UNSET  # a value allowed besides the range: 0 or "" meaning "off" / "the default elsewhere"
    choices: tuple[Any, ...] | str | None = None  # allowed values, or "module:NAME" of a registry
    nonempty: bool = False  # a string, list or mapping with something in it
    # file | dir | exists (either) | model (a Hugging Face model directory): must exist when the
    # command runs ("" is allowed: unset). With choices too: one of those names, or such a path
    path: str = ""
    keys: "Domain | None" = None  # of each key of a mapping

    # --- what the domain allows, in words and as the values at its edges ---------------------------

    def registry(self) -> Any:
        """The registry `choices` names ("module:NAME"), or the literal choices."""
        if isinstance(self.choices, str):
            module, _, name = self.choices.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.choices or ()

    def allowed(self) -> list[Any]:
        """The literal choices, or the names of the registry `choices` names."""
        return list(self.registry())

    def describe(self, integer: bool = False) -> str:
        """What the domain allows, in words: "an integer >= 1", "a number in (0, 1]", "one of ..."."""
        kind = "an integer" if integer else "a number"
        if self.choices is not None:
            names = self.allowed()
            text = (f"{names[0]!r} or {names[1]!r}" if len(names) == 2
                    else "one of " + ", ".join(repr(n) for n in names))
        else:
            lo = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else ""
            hi = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else ""
            if lo and hi:
                text = f"{kind} in {lo}, {hi}"
            elif lo:
                text = f"{kind} {'>=' if self.ge is not None else '>'} {lo[1:]}"
            elif hi:
                text = f"{kind} {'<=' if self.le is not None else '<'} {hi[:-1]}"
            else:
                text = kind if integer else "a finite number"
        return f"{self.off!r} (off) or {text}" if self.off is not _UNSET else text

    def edges(self, integer: bool) -> tuple[list[Any], list[Any]]:
        """(values at the edges of the range, which it allows; values just beyond them, which it
        does not): what a property test draws."""
        step = 1 if integer else 1e-3
        inside, outside = [], []
        for bound, allowed, nudge in ((self.ge, True, -step), (self.gt, False, step), (self.le, True, step),
                                      (self.lt, False, -step)):
            if bound is not None:  # at a closed bound: in, one step out: out; at an open one the reverse
                (inside if allowed else outside).append(bound)
                (outside if allowed else inside).append(bound + nudge)
        cast = int if integer else float
        if self.off is not _UNSET:
            inside.append(self.off)
        return [cast(v) if isinstance(v, (int, float)) else v for v in inside], [cast(v) for v in outside if v != self.off]

    # --- checking ------------------------------------------------------------------------------

    def check(self, value: Any, where: str, paths: bool = True) -> None:
        """A one-line ConfigError naming `where` and `value` when the value is outside the domain.
        `paths`: also check that a named file or directory exists (not when a config is only read,
        e.g. to list the recipes, nor for the files a pipeline's later stages will write)."""
        if isinstance(value, dict):
            if self.nonempty and not value:
                raise ConfigError(f"{where}={{}}: expected a non-empty mapping")
            for k, v in value.items():
                if self.keys is not None and (problem := self.keys.problem(k, paths)):
                    raise ConfigError(f"{where}: key {k!r}: {problem}")
                if problem := self.problem(v, paths):
                    raise ConfigError(f"{where}{f'.{k}' if isinstance(k, str) else f'[{k!r}]'}={v!r}: {problem}")
            return
        if isinstance(value, (list, tuple)):
            if self.nonempty and not value:
                raise ConfigError(f"{where}=[]: expected a non-empty list")
            for i, v in enumerate(value):
                if problem := self.problem(v, paths):
                    raise ConfigError(f"{where}[{i}]={v!r}: {problem}")
            return
        if problem := self.problem(value, paths):
            raise ConfigError(f"{where}={value!r}: {problem}")

    def problem(self, value: Any, paths: bool = True) -> str | None:
        """What is wrong with one value (a number, a string, an item or a mapping's value), or None."""
        if self.off is not _UNSET and value == self.off and type(value) is type(self.off):
            return None
        if isinstance(value, str):
            if self.nonempty and not value:
                return "expected a non-empty string"
            if self.path:
                if not paths or not value or (self.choices is not None and value in self.allowed()):
                    return None
                problem = _path_problem(value, self.path)
                if problem and self.choices is not None:
                    return f"expected one of {', '.join(repr(n) for n in self.allowed())} or {problem[len('expected '):]}"
                return problem
        if self.choices is not None:
            names = self.allowed()
            if value in names:
                return None
            registry = self.registry()
            if isinstance(value, str) and callable(getattr(registry, "makes", None)) and registry.makes(value):
                return registry.name_problem(value)  # a name of a family the registry makes on demand
            close = difflib.get_close_matches(str(value), [str(n) for n in names], n=1, cutoff=0.6)
            return f"expected {self.describe()}" + (f" (did you mean {close[0]!r}?)" if close else "")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            integer = isinstance(value, int)
            if isinstance(value, float) and not math.isfinite(value):
                return f"expected {self.describe(integer)}"
            if ((self.ge is not None and not value >= self.ge) or (self.gt is not None and not value > self.gt)
                    or (self.le is not None and not value <= self.le) or (self.lt is not None and not value < self.lt)):
                return f"expected {self.describe(integer)}"
        return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _path_problem(value: str, kind: str) -> str | None:
    p = Path(value).expanduser()
    if kind == "file":
        return None if p.is_file() else f"expected an existing file ({'a directory' if p.is_dir() else 'not found'})"
    if kind == "dir":
        return None if p.is_dir() else f"expected an existing directory ({'a file' if p.exists() else 'not found'})"
    if kind == "exists":
        return None if p.exists() else "expected an existing file or directory (not found)"
    if kind == "model":
        if not p.is_dir():
            return f"expected a Hugging Face model directory ({'a file' if p.exists() else 'not found'})"
        return None if (p / "config.json").is_file() else "expected a Hugging Face model directory (no config.json in it)"
    raise ValueError(f"unknown path kind {kind!r}")  # a declaration error: the tests of every field catch it


def setting(default: Any, **domain: Any) -> Any:
    """A dataclass field with its default and its domain (Domain's keywords)."""
    meta = {"domain": Domain(**domain)}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def domain_of(f: dataclasses.Field) -> Domain | None:
    return f.metadata.get("domain")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _UNSET


def check_fields(obj: Any, where: str = "", paths: bool = False, nested: bool = True) -> None:
    """Check every field of the dataclass `obj` against its domain (nested dataclasses too, unless
    `nested` is false), then the rules across its fields (its `cross_check(where)`, if it has
    one). A field at its default is valid by declaration (a test checks every default)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        here = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            if nested:
                check_fields(value, here, paths)
            continue
        d = domain_of(f)
        if d is None:
            continue
        if paths and d.path and value:  # a path exists or not now, whatever its default
            d.check(value, here, paths)
        elif value != _default(f):
            d.check(value, here, paths)
    rules = getattr(obj, "cross_check", None)
    if callable(rules):
        rules(where)


def check_value(value: Any, where: str, **domain: Any) -> None:
    """Check one value that is not a dataclass field (a command-line flag) against a domain."""
    if value is not None:
        Domain(**domain).check(value, where)
