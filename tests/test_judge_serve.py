"""`r1lab serve` for real on loopback (a tiny model in a subprocess), and the judge verifier against it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from r1lab.records import Problem, VERDICT_STATUSES
from r1lab.verify.judge import JudgeVerifier, parse_judgement

CORPUS = ["<|im_start|>user\nIs 2 + 2 = 4? Reply CORRECT or INCORRECT.<|im_end|>\n<|im_start|>assistant\nCORRECT<|im_end|>"] * 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from r1lab.config import TinyModelConfig
    from r1lab.models import build_tiny_model, build_tiny_tokenizer, save_model

    path = tmp_path_factory.mktemp("serve") / "tiny"
    tok = build_tiny_tokenizer(CORPUS, vocab_size=300)
    model = build_tiny_model(tok, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64))
    save_model(model, tok, path)
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", str(path), "--port", "0", "--model-name", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # printed once the model is loaded and the port bound
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"r1lab serve did not start: {line!r}")
    base = line.split("http://", 1)[1].split("/v1", 1)[0]
    yield f"http://{base}"
    proc.terminate()
    proc.wait(timeout=10)


def post(url: str, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


MSG = [{"role": "user", "content": "Is 2 + 2 = 4?"}]


def test_models_and_completion(server):
    with urllib.request.urlopen(server + "/v1/models", timeout=10) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny"
    status, _, body = post(server, {"model": "tiny", "messages": MSG, "max_tokens": 8, "n": 2, "temperature": 0.7, "seed": 1})
    out = json.loads(body)
    assert status == 200 and out["object"] == "chat.completion" and len(out["choices"]) == 2
    assert all(c["finish_reason"] in ("stop", "length") and isinstance(c["message"]["content"], str) for c in out["choices"])
    assert out["usage"]["completion_tokens"] <= 16 and out["usage"]["prompt_tokens"] > 0
    again = json.loads(post(server, {"messages": MSG, "max_tokens": 8, "n": 2, "temperature": 0.7, "seed": 1})[2])
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in out["choices"]]  # seeded


def test_streaming_matches_the_plain_reply(server):
    body = {"messages": MSG, "max_tokens": 12, "temperature": 0}
    plain = json.loads(post(server, body)[2])["choices"][0]["message"]["content"]
    status, ctype, raw = post(server, {**body, "stream": True})
    assert status == 200 and ctype.startswith("text/event-stream")
    events = [line[len("data: "):] for line in raw.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == plain
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_bad_requests_get_openai_style_errors(server):
    for raw, body in ((b"{not json", None), (None, {"model": "x"}), (None, {"messages": "hi"}),
                      (None, {"messages": MSG, "temperature": -1}), (None, {"messages": MSG, "stop": [3]})):
        status, _, out = post(server, body, raw)
        assert status == 400 and json.loads(out)["error"]["type"] == "invalid_request_error"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server + "/v2/nothing", timeout=10)
    assert e.value.code == 404


def test_judge_end_to_end(server):
    judge = JudgeVerifier(server, "tiny", timeout=60)
    v = judge("<answer>4</answer>", Problem("j", "What is 2 + 2?", "4", task="judge"))
    assert v.status in VERDICT_STATUSES and v.status != "timeout"
    assert judge.attempts == 1 and "judge" in v.reason  # a real reply came back and was parsed (or refused)


def test_judge_retries_a_closed_port_then_gives_up():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    judge = JudgeVerifier(f"http://127.0.0.1:{port}", retries=2, backoff=0.05, timeout=5)
    t0 = time.monotonic()
    v = judge("<answer>4</answer>", Problem("j", "q", "4"))
    assert v.status == "error" and "after 3 attempts" in v.reason and judge.attempts == 3
    assert time.monotonic() - t0 < 3


def test_judge_overall_timeout_against_a_silent_server():
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        judge = JudgeVerifier(f"http://127.0.0.1:{s.getsockname()[1]}", retries=5, timeout=0.8)
        t0 = time.monotonic()
        v = judge("x", Problem("j", "q", "4"))
    assert v.status in ("timeout", "error") and time.monotonic() - t0 < 2.5


@pytest.mark.parametrize(
    "reply, decision",
    [("CORRECT", True), ("INCORRECT", False), ("The answer is not correct.", False), ("correct.", True),
     ("Hmm, INCORRECT... no wait, CORRECT", True), ("I cannot tell", None), ("", None), ("incorrectly", None)],
)
def test_parse_judgement(reply, decision):
    assert parse_judgement(reply) is decision


def test_judge_task_without_configuration_is_an_error(monkeypatch):
    from r1lab.verify import get_verifier

    monkeypatch.delenv("R1LAB_JUDGE_URL", raising=False)
    assert get_verifier("judge")("x", Problem("j", "q", "4", task="judge")).status == "error"
