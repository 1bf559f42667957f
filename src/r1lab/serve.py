"""`r1lab serve CHECKPOINT`: an OpenAI-compatible chat-completions server for any model r1lab loads.

So trained checkpoints work with existing clients (the `openai` package, eval harnesses, the
judge verifier). Standard library only: `http.server.ThreadingHTTPServer`. Requests are handled
in threads but generate one at a time under a lock (the model is not thread-safe).

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` with messages, temperature, top_p,
max_tokens, n, stop, seed and stream. A vision-language model (a Qwen2-VL checkpoint) also reads
OpenAI-style `image_url` content parts given as data URLs, in the first user message. Streaming sends the OpenAI SSE chunks (`data: {...}` then
`data: [DONE]`), one per generated token, but only after the whole generation is done: the
rollout engine has no per-token callback, so streaming saves clients no latency here.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from r1lab.records import Completion, Problem

MAX_BODY = 8 << 20
DEFAULT_MAX_TOKENS = 256


class RequestError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RequestError(f"'{key}' must be a number in [{lo:g}, {hi:g}]", param=key)
    return float(value)


def _content(content: str | list, where: str) -> tuple[str, list[str]]:
    """A message's text and its images (checked PNG data URLs) from OpenAI-style content: a string,
    or a list of {"type": "text", "text"} and {"type": "image_url", "image_url": {"url"}} parts.
    Only data URLs: the server fetches nothing."""
    from r1lab.errors import DataError
    from r1lab.images import canonical_image

    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith("data:"):
                raise RequestError(f"{where}[{j}]: image_url must be a data URL (data:image/...;base64,...); "
                                   "this server fetches nothing", param="messages")
            try:
                images.append(canonical_image(url, None, f"{where}[{j}]"))
            except DataError as e:
                raise RequestError(str(e), param="messages") from None
        else:
            raise RequestError(f"{where}[{j}]: a content part is {{'type': 'text', 'text'}} or "
                               "{'type': 'image_url', 'image_url': {'url'}}", param="messages")
    return "\n".join(texts), images


def parse_request(body: Any, max_positions: int | None = None, accepts_images: bool = False) -> dict[str, Any]:
    """Validated generation settings from a chat-completions body; RequestError (400) names the field.
    A message's content may be OpenAI-style parts; `images` are the image_url parts' pictures, for a
    vision-language model (`accepts_images`)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    texts, images = [], []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), (str, list))):
            raise RequestError("each message needs a string 'role' and a 'content' (a string or a list of parts)",
                               param="messages")
        text, shown = _content(m["content"], f"messages[{i}].content")
        if shown and (m["role"] != "user" or any(mm.get("role") == "user" for mm in messages[:i])):
            raise RequestError(f"messages[{i}]: images go in the first user message (the model sees them before "
                               "its text)", param="messages")
        texts.append(text)
        images += shown
    if images and not accepts_images:
        raise RequestError("this model is text-only: it cannot read image_url content", param="messages")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise RequestError("'stop' must be a string or a list of non-empty strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("'seed' must be an integer", param="seed")
    hi = float(max_positions or 1 << 20)
    return {
        "messages": [{"role": m["role"], "content": text} for m, text in zip(messages, texts)],
        "images": images,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 1e-9, 1.0),
        "max_tokens": int(_number(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, hi)),
        "n": int(_number(body, "n", 1, 1, 16)),
        "stop": stop,
        "seed": seed,
        "stream": bool(body.get("stream", False)),
    }


def apply_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` cut at the earliest stop string (excluded), and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class ChatModel:
    """A loaded model and the engine that samples from it, one generation at a time."""

    def __init__(self, path: str, name: str | None = None) -> None:
        from r1lab.models import load_model
        from r1lab.rollout import HFEngine
        from r1lab.vision import image_processor_of

        self.model, self.tokenizer = load_model(path)
        self.model.eval()
        self.engine = HFEngine(self.model, self.tokenizer)
        self.name = name or Path(path).name
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.accepts_images = image_processor_of(self.tokenizer) is not None
        self.lock = threading.Lock()
        self.created = int(time.time())

    def complete(self, req: dict[str, Any]) -> tuple[list[Completion], list[tuple[str, str]]]:
        """(raw completions, [(text, finish_reason)]) for one request."""
        from r1lab.rollout import SamplingParams

        params = SamplingParams(temperature=req["temperature"], top_p=req["top_p"], max_new_tokens=req["max_tokens"])
        problem = Problem(id="request", prompt=req["messages"], answer="-", images=req.get("images") or [])
        with self.lock:
            outs = self.engine.generate([problem], params, n=req["n"], seed=req["seed"])
        results = []
        for c in outs:
            text, stopped = apply_stop(c.text, req["stop"])
            results.append((text, "stop" if stopped or c.finish_reason == "stop" else "length"))
        return outs, results


class _Handler(BaseHTTPRequestHandler):
    server_version = "r1lab-serve"
    protocol_version = "HTTP/1.1"
    chat: ChatModel  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # one line per request on stderr
        sys.stderr.write(f"r1lab serve: {self.address_string()} {format % args}\n")

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": self.chat.name, "object": "model", "created": self.chat.created, "owned_by": "r1lab"}
            self._send_json(200, {"object": "list", "data": [model]})
        elif self.path.rstrip("/") in ("", "/health"):
            self._send_json(200, {"status": "ok"})
        else:
            self._error(404, f"no route for GET {self.path}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._read_body()
            self._error(404, f"no route for POST {self.path}")
            return
        try:
            raw = self._read_body()
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise RequestError("the request body is not valid JSON") from None
            req = parse_request(body, self.chat.max_positions, getattr(self.chat, "accepts_images", False))
        except RequestError as e:
            self._error(e.status, str(e), e.param)
            return
        try:
            outs, results = self.chat.complete(req)
        except Exception as e:  # the model failed: the client gets a 500, the server stays up
            self._error(500, f"generation failed: {type(e).__name__}: {e}")
            return
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.chat.name}
        if req["stream"]:
            self._stream(meta, outs, results)
            return
        prompt_tokens = len(outs[0].prompt_ids) if outs else 0
        completion_tokens = sum(len(c.response_ids) for c in outs)
        self._send_json(200, {
            **meta, "object": "chat.completion",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                for i, (text, finish) in enumerate(results)
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError("bad Content-Length") from None
        if length > MAX_BODY:
            raise RequestError(f"request body over {MAX_BODY} bytes", status=413)
        return self.rfile.read(length) if length > 0 else b""

    def _stream(self, meta: dict[str, Any], outs: list[Completion], results: list[tuple[str, str]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def chunk(index: int, delta: dict[str, str], finish: str | None) -> None:
            payload = {**meta, "object": "chat.completion.chunk",
                       "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())

        for i, (text, finish) in enumerate(results):
            chunk(i, {"role": "assistant", "content": ""}, None)
            for piece in _pieces(self.chat.tokenizer, outs[i], text):
                chunk(i, {"content": piece}, None)
            chunk(i, {}, finish)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _pieces(tokenizer: Any, completion: Completion, text: str) -> list[str]:
    """`text` split into per-token deltas whose concatenation is exactly `text`."""
    pieces, done = [], ""
    for k in range(1, len(completion.response_ids) + 1):
        prefix = tokenizer.decode(completion.response_ids[:k], skip_special_tokens=False)
        upto = min(len(prefix), len(text))
        if upto > len(done) and text.startswith(prefix[:upto]):
            pieces.append(text[len(done) : upto])
            done = text[:upto]
    if len(done) < len(text):
        pieces.append(text[len(done) :])
    return pieces


def make_server(chat: ChatModel, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"chat": chat})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def cmd_serve(args: Any) -> int:
    """CLI entry: load, bind (port 0 picks a free one), print the URL, serve until interrupted."""
    from r1lab.domains import check_value

    check_value(args.port, "--port", ge=0, le=65535)
    check_value(args.checkpoint, "checkpoint", path="model", choices="r1lab.hub:REGISTRY")
    chat = ChatModel(args.checkpoint, getattr(args, "model_name", None))
    server = make_server(chat, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"r1lab serve: model {chat.name!r} on http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


__all__ = ["ChatModel", "RequestError", "apply_stop", "cmd_serve", "make_server", "parse_request"]
