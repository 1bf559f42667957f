"""A static check of model-written functions before they run in the sandbox.

The generated code families (code repair, algorithm discovery) ask for one small pure function.
Such a function needs no imports, no files, no introspection: refusing them here closes the
hacks the sandbox alone cannot see from its outcome — reading the oracle or the run's data files,
reaching into a counter's closure, rebinding what the harness later calls, leaving early. The
sandbox still runs whatever passes (limits, isolation), so this check only has to be strict, not
complete.
"""

from __future__ import annotations

import ast

MAX_SOURCE_CHARS = 4000

# names that open files, import, introspect or evaluate text; a pure function needs none of them
FORBIDDEN_NAMES = frozenset({
    "__import__", "__builtins__", "breakpoint", "compile", "delattr", "dir", "eval", "exec", "exit", "getattr",
    "globals", "hasattr", "help", "input", "locals", "memoryview", "object", "open", "print", "quit", "setattr",
    "super", "type", "vars", "id", "hash", "classmethod", "staticmethod", "property",
})
_FORBIDDEN_NODES = (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal, ast.ClassDef, ast.AsyncFunctionDef,
                    ast.Await, ast.Yield, ast.YieldFrom, ast.Try, ast.With, ast.Raise, ast.Delete)


def parse_one_function(source: str, name: str | None = None) -> ast.FunctionDef:
    """The source as exactly one top-level `def` (named `name` when given), checked by
    `check_restricted`. Raises ValueError with a one-line reason otherwise."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError("no code")
    if len(source) > MAX_SOURCE_CHARS:
        raise ValueError(f"code longer than {MAX_SOURCE_CHARS} characters")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError("the code does not parse") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        raise ValueError("the code must be exactly one function definition")
    fn = tree.body[0]
    if name is not None and fn.name != name:
        raise ValueError(f"the function must be named {name!r}, not {fn.name!r}")
    if fn.decorator_list:
        raise ValueError("decorators are not allowed")
    problem = check_restricted(tree)
    if problem:
        raise ValueError(problem)
    return fn


def check_restricted(tree: ast.AST) -> str | None:
    """Why the code is refused (imports, dunder or private attributes, introspection builtins,
    classes, exceptions caught or raised), or None when it is plain."""
    for node in ast.walk(tree):
        if isinstance(node, _FORBIDDEN_NODES):
            return f"{type(node).__name__} statements are not allowed"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return f"attribute {node.attr!r} is not allowed"
        if isinstance(node, ast.Name) and (node.id in FORBIDDEN_NAMES or node.id.startswith("__")):
            return f"name {node.id!r} is not allowed"
        if isinstance(node, ast.arg) and node.arg.startswith("__"):
            return f"argument {node.arg!r} is not allowed"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "__" in node.value:
            return "strings with '__' are not allowed"
    return None
