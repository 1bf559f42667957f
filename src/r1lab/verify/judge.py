"""An LLM judge: ask any OpenAI-compatible endpoint whether a response matches the reference.

For answers no rule can check (free-form proofs, prose). The judge sees the question, the
reference and the response's final answer (its `<answer>`/`\\boxed{}` if any, else the response's
tail) and must reply CORRECT or INCORRECT; the last such word in its reply decides. Anything else
is `Verdict("error")`, never a guess. Only the standard library is used (urllib).

The "judge" task is configured per problem via metadata, else via the environment:
`judge_url` / R1LAB_JUDGE_URL (base URL, e.g. http://127.0.0.1:8000), `judge_model` /
R1LAB_JUDGE_MODEL (default "default"), `judge_timeout` / R1LAB_JUDGE_TIMEOUT (seconds, default 30).
The verifier pool's per-item timeout (verify_batch's `timeout`) must exceed the judge's timeout.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

from r1lab.records import Problem, Verdict, prompt_text
from r1lab.verify.registry import register_verifier
from r1lab.verify.math import extract_answer

DEFAULT_TEMPLATE = (
    "You are grading an answer to a problem.\n"
    "Problem: {question}\n"
    "Reference answer: {reference}\n"
    "Candidate answer: {response}\n"
    "Is the candidate answer equivalent to the reference answer? Reply with exactly one word: CORRECT or INCORRECT."
)
_VERDICT_WORD = re.compile(r"\b(incorrect|not\s+correct|correct)\b", re.IGNORECASE)


def parse_judgement(text: str) -> bool | None:
    """True for CORRECT, False for INCORRECT / NOT CORRECT (the last one in the reply wins); None if neither."""
    if not isinstance(text, str):
        return None
    found = None
    for m in _VERDICT_WORD.finditer(text):
        found = m.group(1).lower() == "correct"
    return found


class JudgeError(Exception):
    """The endpoint could not be reached or answered unusably (after retries)."""


class JudgeVerifier:
    """Calls `POST {base_url}/v1/chat/completions`; retries connection errors and 5xx with backoff.

    `timeout` bounds the whole call, retries included; each attempt gets what is left.
    """

    def __init__(
        self,
        base_url: str,
        model: str = "default",
        template: str = DEFAULT_TEMPLATE,
        retries: int = 2,
        timeout: float = 30.0,
        backoff: float = 0.5,
        max_tokens: int = 16,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.model, self.template, self.retries = model, template, retries
        self.timeout, self.backoff, self.max_tokens = timeout, backoff, max_tokens
        self.attempts = 0  # total HTTP attempts made (observable in tests and logs)

    def prompt(self, response: str, problem: Problem) -> str:
        answer, _ = extract_answer(response, phrases=True) if isinstance(response, str) else (None, "none")
        shown = answer if answer is not None else (response or "")[-2000:]
        return self.template.format(question=prompt_text(problem.prompt), reference=problem.answer, response=shown)

    def ask(self, content: str) -> str:
        """The judge's reply text; JudgeError or TimeoutError after the retries/deadline."""
        body = json.dumps({
            "model": self.model, "messages": [{"role": "user", "content": content}],
            "temperature": 0, "max_tokens": self.max_tokens,
        }).encode()
        deadline = time.monotonic() + self.timeout
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"judge did not answer within {self.timeout:g}s ({last})")
            self.attempts += 1
            req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=left) as resp:
                    return _reply_text(json.loads(resp.read()))
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code < 500:
                    raise JudgeError(f"judge refused the request: {last}: {e.read()[:200]!r}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except ValueError as e:
                raise JudgeError(f"judge reply is not chat-completions JSON: {e}") from None
            if attempt < self.retries:
                time.sleep(min(self.backoff * 2**attempt, max(0.0, deadline - time.monotonic())))
        raise JudgeError(f"judge unreachable after {self.retries + 1} attempts: {last}")

    def __call__(self, response: str, problem: Problem) -> Verdict:
        try:
            reply = self.ask(self.prompt(response, problem))
        except TimeoutError as e:
            return Verdict("timeout", str(e))
        except JudgeError as e:
            return Verdict("error", str(e))
        decision = parse_judgement(reply)
        shown = reply if len(reply) <= 200 else reply[:200] + "..."
        if decision is None:
            return Verdict("error", f"judge reply has no CORRECT/INCORRECT: {shown!r}")
        return Verdict("correct" if decision else "wrong", f"judge said: {shown!r}")


def _reply_text(payload: Any) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0].message.content") from None
    return content if isinstance(content, str) else ""


@register_verifier("judge")
def verify_judge(response: str, problem: Problem) -> Verdict:
    """The "judge" task: a JudgeVerifier configured from metadata or the environment (module docstring)."""
    meta = problem.metadata or {}
    url = meta.get("judge_url") or os.environ.get("R1LAB_JUDGE_URL")
    if not url:
        return Verdict("error", "no judge endpoint: set metadata['judge_url'] or R1LAB_JUDGE_URL")
    model = str(meta.get("judge_model") or os.environ.get("R1LAB_JUDGE_MODEL") or "default")
    timeout = float(meta.get("judge_timeout") or os.environ.get("R1LAB_JUDGE_TIMEOUT") or 30.0)
    return JudgeVerifier(str(url), model, timeout=timeout)(response, problem)


__all__ = ["DEFAULT_TEMPLATE", "JudgeError", "JudgeVerifier", "parse_judgement", "verify_judge"]
