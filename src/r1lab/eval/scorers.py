"""Step scorers: models that judge a partial or complete response (a process reward model), for
test-time search (eval/search.py).

A `StepScorer` has `score(prompts, partials) -> list[float]`, higher = better: `prompts[i]` is the
problem's prompt text, `partials[i]` what the model has written so far (the response text, with the
chat template's pre-filled `<think>` if there is one).

A scorer is a directory whose `scorer.json` names its `kind`; `load_scorer(path)` looks the kind up
in SCORER_KINDS ("module:attribute", imported when first used) and calls that attribute's `load(path)`
(a class with a `load` classmethod) or the attribute itself (a function path -> scorer). Registering
another kind is one entry in SCORER_KINDS (or a `register_scorer_kind` call).

`ImplicitPRMScorer` scores with the implicit PRM a PRIME run saves (train/prm.py): the process
reward of token t is beta * log(pi_phi(y_t | y_<t) / pi_ref(y_t | y_<t)), and q_t, their sum over
the tokens up to t, is the PRM's value of the prefix (its outcome logit for a complete response,
the quantity its cross-entropy training fits). A partial's score is, with `agg`:
- "sum" (default): q at the partial's last token, the value of the whole prefix;
- "min": the smallest q at the end of each step (each token that completes a `delimiter`, and the
  last token): one step whose prefix value is low sinks the response.
The partial is tokenized from its text (the ids an engine wrote may differ for the same text), and a
complete response is scored without its end-of-sequence token, which its text does not hold.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from r1lab.errors import ConfigError, ModelError
from r1lab.models import PPM_KIND, PRM_KIND, SCORER_FILE, load_model, render_prompt, token_logprobs


@runtime_checkable
class StepScorer(Protocol):
    def score(self, prompts: list[str], partials: list[str]) -> list[float]: ...


# kind (scorer.json's "kind") -> "module:attribute" whose load(path) (or call) gives the scorer
SCORER_KINDS: dict[str, str] = {
    PRM_KIND: "r1lab.eval.scorers:ImplicitPRMScorer",
    PPM_KIND: "r1lab.train.ppm:ProcessPreferenceModel",  # rStar-Math's process preference model
}
AGGREGATIONS = ("sum", "min")


def register_scorer_kind(kind: str, target: str) -> None:
    """Make directories whose scorer.json says `kind` load through `target` ("module:attribute")."""
    if ":" not in target:
        raise ValueError(f"scorer kind {kind!r}: target must be 'module:attribute', got {target!r}")
    SCORER_KINDS[kind] = target


def read_scorer_info(path: str | Path) -> dict:
    """scorer.json of a scorer directory; a ConfigError naming what is missing or wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"scorer {path}: not a directory")
    f = path / SCORER_FILE
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"scorer {path}: no {SCORER_FILE} (a PRIME run writes one in run_dir/prm/)") from None
    except ValueError as e:
        raise ConfigError(f"scorer {f}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("kind"), str):
        raise ConfigError(f"scorer {f}: needs a \"kind\" string (known: {', '.join(sorted(SCORER_KINDS))})")
    return info


def load_scorer(path: str | Path, **options) -> StepScorer:
    """The scorer saved in directory `path`, by the kind its scorer.json names. `options` (e.g. agg,
    delimiter) go to the loader when its signature takes them, and are left out when it does not."""
    info = read_scorer_info(path)
    kind = info["kind"]
    if kind not in SCORER_KINDS:
        raise ConfigError(f"scorer {path}: unknown kind {kind!r} (known: {', '.join(sorted(SCORER_KINDS))})")
    module, _, attr = SCORER_KINDS[kind].partition(":")
    try:
        target = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"scorer kind {kind!r}: cannot import {SCORER_KINDS[kind]} ({e})") from None
    loader = getattr(target, "load", target)
    try:
        accepted = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    scorer = loader(Path(path), **{k: v for k, v in options.items() if takes_any or k in accepted})
    if not callable(getattr(scorer, "score", None)):
        raise ConfigError(f"scorer kind {kind!r}: {SCORER_KINDS[kind]} gave a {type(scorer).__name__} without score()")
    return scorer


def aggregate_prefix(token_rewards: torch.Tensor, step_ends: list[int], agg: str) -> float:
    """A partial's score from its tokens' process rewards [T] (float64 sum): "sum" is q at the last
    token; "min" the smallest q at the token indices `step_ends` (the last token is always one).
    An empty partial scores 0 (q before any token)."""
    if agg not in AGGREGATIONS:
        raise ConfigError(f"scorer aggregation {agg!r}: expected one of {', '.join(AGGREGATIONS)}")
    T = token_rewards.shape[0]
    if T == 0:
        return 0.0
    q = token_rewards.to(torch.float64).cumsum(0)
    if agg == "sum":
        return float(q[-1])
    ends = sorted({i for i in step_ends if 0 <= i < T} | {T - 1})
    return float(q[ends].min())


def step_end_tokens(offsets: list[tuple[int, int]], text: str, delimiter: str) -> list[int]:
    """Indices of the tokens that complete each occurrence of `delimiter` in `text`, from the
    tokens' character offsets: the first token whose span reaches the occurrence's end."""
    ends, at = [], text.find(delimiter) if delimiter else -1
    while at >= 0:
        stop = at + len(delimiter)
        k = next((i for i, (_, e) in enumerate(offsets) if e >= stop), None)
        if k is not None:
            ends.append(k)
        at = text.find(delimiter, stop)
    return ends


class ImplicitPRMScorer:
    """PRIME's implicit PRM (a PRM model and its reference) as a step scorer; see the module's
    docstring for the score. Log-probs at temperature 1, in float32 (the models' dtype)."""

    def __init__(self, model, ref_model, tokenizer, beta: float, agg: str = "sum", delimiter: str = "\n",
                 batch_size: int = 16):
        if agg not in AGGREGATIONS:
            raise ConfigError(f"scorer aggregation {agg!r}: expected one of {', '.join(AGGREGATIONS)}")
        if not beta > 0:
            raise ConfigError(f"implicit PRM: beta must be > 0, got {beta}")
        self.model, self.ref_model, self.tokenizer = model.eval(), ref_model.eval(), tokenizer
        self.beta, self.agg, self.delimiter, self.batch_size = float(beta), agg, delimiter, batch_size
        self.scored_tokens = 0  # response tokens scored so far (the scorer's share of the compute)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def load(cls, path: str | Path, agg: str = "sum", delimiter: str = "\n", dtype: str = "float32") -> "ImplicitPRMScorer":
        path = Path(path)
        info = read_scorer_info(path)
        if info["kind"] != PRM_KIND or "beta" not in info or "reference" not in info:
            raise ConfigError(f"{path / SCORER_FILE}: not an implicit PRM (needs kind {PRM_KIND!r}, beta, reference)")
        ref_path = path / info["reference"] if not Path(info["reference"]).is_absolute() else Path(info["reference"])
        if not ref_path.is_dir():
            raise ConfigError(f"implicit PRM {path}: its reference model {ref_path} is not a directory "
                              "(the run's starting model was moved or removed)")
        try:
            model, tok = load_model(path, dtype)
            ref, _ = load_model(ref_path, dtype)
        except ModelError as e:
            raise ConfigError(f"implicit PRM {path}: {e}") from None
        return cls(model, ref, tok, info["beta"], agg=agg, delimiter=delimiter)

    def _ids(self, prompt: str, partial: str) -> tuple[list[int], list[int], list[tuple[int, int]], str]:
        """(prompt ids, response ids, response token offsets, response text as tokenized): the
        prompt rendered as the engine renders it; a pre-filled `<think>` the template already put in
        the prompt is not counted twice."""
        rendered = render_prompt(self.tokenizer, prompt)
        tail = rendered.rstrip()
        if tail.endswith("<think>"):
            prefill = rendered[rendered.rfind("<think>"):]
            if partial.startswith(prefill):
                partial = partial[len(prefill):]
        p_ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        enc = self.tokenizer(partial, add_special_tokens=False, return_offsets_mapping=True)
        return p_ids, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], partial

    @torch.no_grad()
    def token_rewards(self, prompts: list[str], partials: list[str]) -> list[tuple[torch.Tensor, list[int]]]:
        """For each (prompt, partial): its response tokens' process rewards [T] and the indices of
        the tokens that end a step."""
        jobs = [self._ids(p, r) for p, r in zip(prompts, partials)]
        out: list[tuple[torch.Tensor, list[int]]] = [None] * len(jobs)  # type: ignore[list-item]
        order = sorted(range(len(jobs)), key=lambda i: len(jobs[i][0]) + len(jobs[i][1]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s: s + self.batch_size]
            rows = [jobs[i][0] + jobs[i][1] for i in idx]
            L = max(len(r) for r in rows)
            ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
            att = torch.zeros((len(rows), L), dtype=torch.long)
            for b, r in enumerate(rows):
                ids[b, : len(r)] = torch.tensor(r)
                att[b, : len(r)] = 1
            if L < 2:  # a bare one-token row has nothing to predict
                lp = ref = torch.zeros((len(rows), max(L - 1, 0)))
            else:
                lp = token_logprobs(self.model, ids, att)[0]
                ref = token_logprobs(self.ref_model, ids, att)[0]
            for b, i in enumerate(idx):
                p_ids, r_ids, offsets, text = jobs[i]
                a, z = len(p_ids) - 1, len(p_ids) - 1 + len(r_ids)  # predictions of the response tokens
                r = self.beta * (lp[b, a:z].double() - ref[b, a:z].double())
                out[i] = (r, step_end_tokens(offsets, text, self.delimiter))
                self.scored_tokens += len(r_ids)
        return out

    def score(self, prompts: list[str], partials: list[str]) -> list[float]:
        if len(prompts) != len(partials):
            raise ValueError(f"score: {len(prompts)} prompts but {len(partials)} partials")
        return [aggregate_prefix(r, ends, self.agg) for r, ends in self.token_rewards(prompts, partials)]
