"""An engine that samples from any OpenAI-compatible chat-completions server (`r1lab serve`, vLLM,
SGLang, ...), so a served model is scored by the same eval code as a local one.

Standard library only (urllib and a small thread pool). Each sample is one request with n=1 and
its own seed (seed + position), so the samples do not depend on how requests interleave and the
server's `usage.completion_tokens` is that sample's length. Endpoints do not return token ids or
log-probs: the completions carry text, finish reason and token count only, which is all that
evaluation needs (they cannot feed the RL trainer).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable

from r1lab.errors import R1labError
from r1lab.records import Completion, Problem, prompt_messages
from r1lab.rollout.base import Engine, SamplingParams


class EndpointError(R1labError):
    """The endpoint cannot be reached or answered with something that is not a chat completion."""


def is_endpoint(model: str) -> bool:
    return model.startswith(("http://", "https://"))


class OpenAIEngine(Engine):
    """`generate(problems, params, n, seed, on_batch)` like HFEngine, over HTTP.

    base_url is the API root, e.g. http://127.0.0.1:8000/v1 (a trailing /v1 is added when missing).
    """

    def __init__(self, base_url: str, model: str | None = None, concurrency: int = 8, timeout: float = 600.0,
                 retries: int = 2, api_key: str | None = None):
        url = base_url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        self.base_url = url
        self.model = model
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.retries = retries
        self.api_key = api_key

    # -- HTTP --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                detail = " ".join(detail.split())[:200]
            raise EndpointError(f"{url}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise EndpointError(f"cannot reach the endpoint {url}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise EndpointError(f"{url}: the answer is not JSON: {raw[:80]!r}") from None

    def check(self) -> str:
        """Reach the server once (GET /models) and settle the model id to send; returns it.
        Raises EndpointError, in one line naming the URL, when nothing answers."""
        listing = self._request("GET", "/models", timeout=min(self.timeout, 10.0))
        ids = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] if isinstance(listing, dict) else []
        if self.model is None:
            if not ids:
                raise EndpointError(f"{self.base_url}/models lists no model; name one with --model-name")
            self.model = str(ids[0])
        return self.model

    def _complete(self, messages: list[dict[str, str]], params: SamplingParams, seed: int | None) -> tuple[str, str, int | None]:
        body: dict[str, Any] = {"model": self.model or "default", "messages": messages, "n": 1,
                                "temperature": params.temperature, "top_p": params.top_p,
                                "max_tokens": params.max_new_tokens}
        if seed is not None:
            body["seed"] = seed
        for attempt in range(self.retries + 1):
            try:
                out = self._request("POST", "/chat/completions", body)
                break
            except EndpointError as e:
                # a dropped connection or an overloaded server gets a retry; a 4xx is final
                if attempt == self.retries or " HTTP 4" in str(e):
                    raise
                time.sleep(0.5 * 2**attempt)
        try:
            choice = out["choices"][0]
            text = choice["message"]["content"] or ""
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.base_url}/chat/completions: not a chat completion: {str(out)[:120]}") from None
        usage = out.get("usage") if isinstance(out, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return text, finish, tokens if isinstance(tokens, int) else None

    # -- the engine interface --------------------------------------------------------------------

    policy_version = 0  # whatever the server serves; it cannot be told to load weights

    def load_weights(self, weights, version: int) -> None:
        raise EndpointError(f"{self.base_url}: an endpoint serves its own weights and cannot load a policy's; "
                            "train with a local engine (rollout.engine=fast, hf or vllm)")

    def close(self) -> None:
        pass

    def generate(
        self,
        problems: list[Problem],
        params: SamplingParams,
        n: int = 1,
        seed: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        first_sample: int = 0,
    ) -> list[Completion]:
        """len(problems) * n completions, the n samples of problem i at positions i*n .. i*n+n-1.
        Sample j of problem i is requested with seed `seed + first_sample + i*n + j` (when a seed is given)."""
        if self.model is None:
            self.check()
        jobs = [(p, j) for p in problems for j in range(n)]
        results: list[Completion | None] = [None] * len(jobs)

        def one(k: int) -> None:
            p, _ = jobs[k]
            messages = with_image_parts(prompt_messages(p.prompt), p.images) if p.images else prompt_messages(p.prompt)
            text, finish, tokens = self._complete(messages, params, None if seed is None else seed + first_sample + k)
            results[k] = Completion(problem_id=p.id, prompt_ids=[], response_ids=[], text=text, logprobs=[],
                                    finish_reason=finish, token_count=tokens)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            pending = {pool.submit(one, k) for k in range(len(jobs))}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise f.exception()  # type: ignore[misc]
                if on_batch and done:
                    on_batch(len(done))
        return results  # type: ignore[return-value]


def with_image_parts(messages: list[dict], images: list[str]) -> list[dict]:
    """The messages with the images as OpenAI `image_url` parts (data URLs) opening the first user
    message, where r1lab's own engines show them."""
    out = [dict(m) for m in messages]
    first = next((m for m in out if m.get("role", "user") == "user"), None)
    if first is None:
        raise EndpointError("a prompt with images needs a user message to show them in")
    first["content"] = [{"type": "image_url", "image_url": {"url": url}} for url in images] + \
        [{"type": "text", "text": str(first.get("content", ""))}]
    return out


__all__ = ["EndpointError", "OpenAIEngine", "is_endpoint", "with_image_parts"]
