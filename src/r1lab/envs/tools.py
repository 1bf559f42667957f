"""Tools a model may call in an episode, and their registry: python (r1lab's sandbox), a calculator
(safe arithmetic over the AST) and a local search over a corpus (BM25, bm25s).

A tool is `run(arguments, state, timeout) -> ToolResult`; `state` is the episode's own dict, so a
tool may remember things within one episode and nothing across episodes. Bad input, a raising tool,
a hanging one, a flood of output: a ToolResult with an error status for the model to read, never an
exception (`call_tool` guarantees it for any tool, registered or not).

Python keeps its state across the calls of an episode by re-running the episode's earlier
successful cells (their output discarded) before the new one, each call in a fresh sandboxed
process: the variables and functions a cell defined are there in the next, at the cost of running
them again within the new call's time limit. A cell that draws random numbers or reads the clock
sees other values on the re-run; files it wrote are gone (every call has a fresh directory).
"""

from __future__ import annotations

import ast
import json
import math
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from r1lab.envs.base import Factories
from r1lab.errors import ConfigError

TOOL_STATUSES = ("ok", "error", "timeout", "output_limit", "memory", "killed")


@dataclass
class ToolResult:
    text: str  # what the model reads
    status: str = "ok"  # one of TOOL_STATUSES

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Tool:
    """name: what a JSON call names; tag: the plain-tag format's element (`<calc>1+2</calc>`);
    argument: the one argument that tag carries; sandboxed: the tool bounds its own time."""

    name = ""
    tag = ""
    argument = ""
    description = ""
    sandboxed = False

    def run(self, arguments: dict[str, Any], state: dict[str, Any], timeout: float) -> ToolResult:
        raise NotImplementedError


def call_tool(tool: Tool, arguments: dict[str, Any], state: dict[str, Any], timeout: float) -> ToolResult:
    """Run a tool, whatever it does: an exception, a wrong return type or (for a tool that does not
    bound its own time) running past `timeout` becomes an error result. A thread cannot be killed:
    a tool that hangs keeps its daemon thread, which is why code runs in the sandbox instead."""
    def guarded() -> ToolResult:
        try:
            out = tool.run(arguments, state, timeout)
        except Exception as e:
            return ToolResult(f"error: tool {tool.name} failed: {type(e).__name__}: {_short(str(e))}", "error")
        if not isinstance(out, ToolResult):
            return ToolResult(f"error: tool {tool.name} returned {type(out).__name__}", "error")
        return out

    if tool.sandboxed:
        return guarded()
    box: list[ToolResult] = []
    worker = threading.Thread(target=lambda: box.append(guarded()), daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        return ToolResult(f"error: tool {tool.name} timed out after {timeout:g}s", "timeout")
    return box[0]


def _short(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "..."


# --- python ----------------------------------------------------------------------------------------

# the earlier cells run with stdout discarded, then the new cell; names prefixed so a cell cannot
# clash with them by accident
_REPLAY = """import io as _r1lab_io, sys as _r1lab_sys
_r1lab_cells = {cells}
_r1lab_stdout = _r1lab_sys.stdout
_r1lab_sys.stdout = _r1lab_io.StringIO()
for _r1lab_cell in _r1lab_cells[:-1]:
    exec(compile(_r1lab_cell, "<earlier cell>", "exec"), globals())
_r1lab_sys.stdout = _r1lab_stdout
del _r1lab_io, _r1lab_sys, _r1lab_stdout
exec(compile(_r1lab_cells[-1], "<cell>", "exec"), globals())
"""


class PythonTool(Tool):
    name, tag, argument = "python", "python", "code"
    description = "Runs Python code (standard library only, no network, no files outside its directory); returns what it prints."
    sandboxed = True

    def __init__(self, memory_mb: int = 512, max_output_bytes: int = 100_000, keep_state: bool = True):
        self.memory_mb, self.max_output_bytes, self.keep_state = memory_mb, max_output_bytes, keep_state

    def run(self, arguments, state, timeout):
        from r1lab.verify.sandbox import run_python

        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            return ToolResult("error: python needs a non-empty 'code' string", "error")
        code = _unfence(code)
        cells = (state.setdefault("python_cells", []) if self.keep_state else []) + [code]
        res = run_python(_REPLAY.format(cells=repr(cells)), timeout=timeout, memory_mb=self.memory_mb,
                         max_output=self.max_output_bytes, confine_reads=True)
        if res.ok:
            if self.keep_state:
                state["python_cells"].append(code)
            return ToolResult(res.stdout if res.stdout.strip() else "(no output)")
        told = {"timeout": f"timed out after {timeout:g}s", "memory": "out of memory",
                "output_limit": f"output over {self.max_output_bytes} bytes; stopped"}.get(res.status, res.reason)
        told = told.replace(" in the program:", ":")
        status = "error" if res.status == "runtime_error" else res.status
        return ToolResult((res.stdout + "\n" if res.stdout.strip() else "") + f"error: {told}", status)


def _unfence(code: str) -> str:
    """Code without the markdown fence models put around it."""
    text = code.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        if text.rstrip().endswith("```"):
            text = text.rstrip()[:-3]
    return text.strip("\n")


# --- calculator ------------------------------------------------------------------------------------

_CALC_FUNCS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log2": math.log2, "log10": math.log10,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "floor": math.floor, "ceil": math.ceil, "abs": abs, "round": round, "factorial": math.factorial,
    "gcd": math.gcd, "min": min, "max": max,
}
_CALC_CONSTS = {"pi": math.pi, "e": math.e}
_CALC_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
             ast.Div: lambda a, b: a // b if isinstance(a, int) and isinstance(b, int) and b and a % b == 0 else a / b,
             ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b, ast.Pow: lambda a, b: a ** b}
MAX_CALC_CHARS, MAX_CALC_BITS = 500, 4096  # an expression's length, an integer result's size


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression: numbers, + - * / // % **, parentheses, pi, e and the
    functions in _CALC_FUNCS. Never eval: the AST is walked, and anything else is a ValueError, as
    is an integer beyond MAX_CALC_BITS bits (2**10**9 is refused before it is computed)."""
    if len(expression) > MAX_CALC_CHARS:
        raise ValueError(f"expression longer than {MAX_CALC_CHARS} characters")
    try:
        tree = ast.parse(expression.strip().replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    return _calc(tree.body, 0)


def _calc(node: ast.AST, depth: int) -> int | float:
    if depth > 50:
        raise ValueError("expression nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CALC_CONSTS:
        return _CALC_CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _calc(node.operand, depth + 1)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _CALC_OPS:
        a, b = _calc(node.left, depth + 1), _calc(node.right, depth + 1)
        if isinstance(node.op, ast.Pow) and isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and (
                b > MAX_CALC_BITS or b * max(1, a.bit_length() - 1) > MAX_CALC_BITS):
            raise ValueError("result too large")
        return _sized(_CALC_OPS[type(node.op)](a, b))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALC_FUNCS and not node.keywords:
        args = [_calc(a, depth + 1) for a in node.args]
        if node.func.id == "factorial" and (len(args) != 1 or not isinstance(args[0], int) or not 0 <= args[0] <= 1000):
            raise ValueError("factorial takes one integer from 0 to 1000")
        return _sized(_CALC_FUNCS[node.func.id](*args))
    raise ValueError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _sized(v: Any) -> int | float:
    if isinstance(v, complex):
        raise ValueError("complex result")
    if isinstance(v, int) and v.bit_length() > MAX_CALC_BITS:
        raise ValueError("result too large")
    return v


class CalculatorTool(Tool):
    name, tag, argument = "calculator", "calc", "expression"
    description = "Evaluates an arithmetic expression (+ - * / // % **, sqrt, log, sin, factorial, pi, e...)."

    def run(self, arguments, state, timeout):
        expr = arguments.get("expression")
        if not isinstance(expr, str):
            return ToolResult("error: calculator needs an 'expression' string", "error")
        try:
            value = calculate(expr)
        except (ValueError, ArithmeticError, TypeError) as e:  # 1/0, log(-1), sqrt of a string...
            return ToolResult(f"error: {type(e).__name__ if not isinstance(e, ValueError) else 'invalid'}: {e}", "error")
        return ToolResult(format(value, ".12g") if isinstance(value, float) else str(value))


# --- search ----------------------------------------------------------------------------------------


def _bm25s():
    """bm25s on its numpy backend. Where numba is installed (vLLM needs it) bm25s imports it, and
    with it llvmlite, whose function wrappers crash vLLM's engine start-up (it scans every loaded
    module for kernels) later in the same process; the numpy backend is fast enough for a local
    corpus."""
    import sys

    if "bm25s" not in sys.modules and "numba" not in sys.modules:
        sys.modules["numba"] = None  # type: ignore[assignment]  # makes bm25s's `from numba import njit` fail
        try:
            import bm25s
        finally:
            del sys.modules["numba"]
        return bm25s
    import bm25s

    return bm25s


class SearchIndex:
    """BM25 over a list of documents (text, or dicts with "text" and an optional "title")."""

    def __init__(self, documents: list[str | dict[str, str]]):
        bm25s = _bm25s()
        self.documents = [d if isinstance(d, dict) else {"text": str(d)} for d in documents]
        if not self.documents:
            raise ConfigError("search: the corpus has no documents")
        self._bm25s = bm25s
        self.retriever = bm25s.BM25()
        texts = [f"{d.get('title', '')}\n{d.get('text', '')}" for d in self.documents]
        self.retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def search(self, query: str, k: int) -> list[tuple[float, dict[str, str]]]:
        """The best `k` documents that share a term with the query, best first."""
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        k = min(k, len(self.documents))
        if not tokens.vocab:
            return []
        ids, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return [(float(s), self.documents[int(i)]) for i, s in zip(ids[0], scores[0]) if s > 0]


@lru_cache(maxsize=4)
def _index_of_file(path: str, mtime: float) -> SearchIndex:
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                docs.append(row if isinstance(row, dict) else str(row))
    return SearchIndex(docs)


def load_index(path: str) -> SearchIndex:
    """A JSON Lines corpus ({"text", "title"} per line), indexed once per process and file version."""
    if not os.path.isfile(path):
        raise ConfigError(f"search: corpus file not found: {path}")
    return _index_of_file(os.path.realpath(path), os.path.getmtime(path))


class SearchTool(Tool):
    name, tag, argument = "search", "search", "query"
    description = "Searches a local document collection; returns the best matching passages."

    def __init__(self, corpus: str | list | SearchIndex, k: int = 3, max_chars_per_doc: int = 600):
        self.index = corpus if isinstance(corpus, SearchIndex) else load_index(corpus) if isinstance(corpus, str) \
            else SearchIndex(corpus)
        self.k, self.max_chars_per_doc = k, max_chars_per_doc

    def run(self, arguments, state, timeout):
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            return ToolResult("error: search needs a non-empty 'query' string", "error")
        hits = self.index.search(query[:1000], self.k)
        if not hits:
            return ToolResult("no results")
        parts = []
        for rank, (_, doc) in enumerate(hits, 1):
            title = f" {doc['title']}" if doc.get("title") else ""
            parts.append(f"[{rank}]{title}\n{_short(str(doc.get('text', '')), self.max_chars_per_doc)}")
        return ToolResult("\n\n".join(parts))


# --- the registry ----------------------------------------------------------------------------------

TOOLS: Factories[Tool] = Factories("tool", {"python": PythonTool, "calculator": CalculatorTool, "search": SearchTool})
register_tool = TOOLS.register
known_tools = TOOLS.known
make_tool = TOOLS.make
