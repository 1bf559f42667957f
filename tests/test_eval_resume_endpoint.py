"""`r1lab eval` beyond one pass: resume of an interrupted eval, scoring an OpenAI-compatible endpoint
(`r1lab serve` in-process), `--compare`, the summary with plots, and bad input (dead endpoint,
changed settings) as one-line errors that write nothing. All on the tiny model: seconds."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from r1lab.benchmarks import load_benchmark
from r1lab.cli import main
from r1lab.eval.run import ResumeError, evaluate, settings_path
from r1lab.models import save_model
from r1lab.records import Problem
from r1lab.rollout import HFEngine, SamplingParams
from r1lab.rollout.openai import EndpointError, OpenAIEngine

VOLATILE = ("seconds", "tokens_per_s", "resumed_problems")


class Interrupt(Exception):
    pass


def _stable(summary):
    return {k: None if v != v else v for k, v in summary.items() if k not in VOLATILE}  # NaN -> None: comparable


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    return save_model(*tiny, tmp_path_factory.mktemp("tiny") / "model")


def _problems():  # short prompts: the tiny model's tokenizer makes ~5 tokens of each benchmark word
    return [Problem(id=f"p{i}", prompt=f"Compute {i} + 3.", answer=str(i + 3)) for i in range(10)]


def _eval(tiny, out, **kw):
    model, tok = tiny
    return evaluate(HFEngine(model, tok, batch_size=8), _problems(),
                    SamplingParams(temperature=1.0, max_new_tokens=6), n=2, seed=3, verify_workers=0,
                    out_path=out, show_progress=False, resume=True, settings={"model": "tiny"}, chunk_size=3, **kw)


def test_interrupted_eval_resumes_and_scores_each_problem_once(tiny, tmp_path):
    full = _eval(tiny, tmp_path / "full.jsonl")
    out = tmp_path / "part.jsonl"

    def stop_after_two_chunks(done, total):
        if done >= 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        _eval(tiny, out, on_progress=stop_after_two_chunks)
    assert len(_ids(out)) == 6  # what finished before the interruption is on disk
    with out.open("a") as f:  # and a write torn by a crash is dropped, then scored again
        f.write('{"id": "p6", "sampl')
    calls = []
    res = _eval(tiny, out, on_progress=lambda d, t: calls.append(d))
    assert calls == [9, 10]  # only the two unfinished chunks were generated
    assert res.summary["resumed_problems"] == 6
    ids = _ids(out)
    assert sorted(ids) == sorted(p.id for p in _problems()) and len(set(ids)) == 10
    assert _stable(res.summary) == _stable(full.summary)
    assert [r["samples"] for r in res.rows] == [r["samples"] for r in full.rows]  # the same samples, not just counts
    again = _eval(tiny, out, on_progress=lambda d, t: pytest.fail("nothing left to generate"))
    assert _stable(again.summary) == _stable(full.summary)


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    out = tmp_path / "r.jsonl"
    _eval(tiny, out)
    before = out.read_bytes()
    model, tok = tiny
    with pytest.raises(ResumeError, match=r"temperature: saved 1\.0, now 0\.0"):
        evaluate(HFEngine(model, tok), _problems(), SamplingParams(temperature=0.0, max_new_tokens=6),
                 n=2, seed=3, verify_workers=0, out_path=out, show_progress=False, resume=True, settings={"model": "tiny"})
    with pytest.raises(ResumeError, match=r"model: saved 'tiny', now 'other'"):
        evaluate(HFEngine(model, tok), _problems(), SamplingParams(temperature=1.0, max_new_tokens=6),
                 n=2, seed=3, verify_workers=0, out_path=out, show_progress=False, resume=True, settings={"model": "other"})
    assert out.read_bytes() == before


def test_cli_resume_summary_plots_and_compare(tiny_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["eval", str(tiny_dir), "--benchmarks", "gsm8k,math500", "--max-new-tokens", "4", "--quiet", "--out", str(out),
            "reward.verify_workers=0"]
    assert main(args + ["--limit", "1"]) == 0
    assert main(args + ["--limit", "3"]) == 0  # continues: problems 2 and 3 only
    for name in ("gsm8k", "math500"):
        assert len(_ids(out / "eval" / f"{name}.jsonl")) == 3
        assert json.loads(settings_path(out / "eval" / f"{name}.jsonl").read_text())["model"] == str(tiny_dir.resolve())
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["gsm8k"]["problems"] == 3 and summary["gsm8k"]["resumed_problems"] == 1
    report = (out / "eval" / "summary.md").read_text()
    assert "| gsm8k | 3 | 1 |" in report and "| math500 by level |" in report and "| math500 by subject |" in report
    for png in ("accuracy.png", "math500_by_level.png", "math500_by_subject.png"):
        data = (out / "eval" / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 400 and height >= 250, png
        assert f"plots/{png}" in report
    # another setting into the same directory: refused, in one line, nothing changed
    before = (out / "eval" / "gsm8k.jsonl").read_bytes()
    capsys.readouterr()
    assert main(args + ["--limit", "3", "--n", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "other settings" in err and "n: saved 1, now 2" in err
    assert (out / "eval" / "gsm8k.jsonl").read_bytes() == before

    # --compare: a second run beside the first, one table
    other = tmp_path / "ev2"
    assert main(["eval", str(tiny_dir), "--benchmarks", "gsm8k", "--limit", "2", "--n", "2", "--max-new-tokens", "4",
                 "--quiet", "--out", str(other), "reward.verify_workers=0"]) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(out), str(other), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "| benchmark | metric | ev | ev2 |" in table
    assert "| gsm8k | n | 1 | 2 |" in table and "| gsm8k | problems | 3 | 2 |" in table
    assert "| math500 | n | 1 | - |" in table  # not evaluated by ev2
    assert table.split("\n\n")[0] in (tmp_path / "cmp" / "compare.md").read_text()
    assert main(["eval", "--compare", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


@pytest.fixture
def server(tiny_dir):
    from r1lab.serve import ChatModel, make_server

    srv = make_server(ChatModel(str(tiny_dir), "tiny-served"), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_endpoint_eval_matches_the_local_model(server, tiny, tiny_dir, tmp_path, capsys):
    # greedy through HTTP gives what the local engine gives on one unpadded prompt at a time
    problems = load_benchmark("gsm8k", 3)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    engine = OpenAIEngine(server, concurrency=3)
    assert engine.check() == "tiny-served"
    remote = engine.generate(problems, params, n=1, seed=0)
    local = HFEngine(*tiny, batch_size=1).generate(problems, params, n=1)
    assert [c.text for c in remote] == [c.text for c in local]
    assert [c.num_tokens for c in remote] == [len(c.response_ids) for c in local]
    assert all(c.response_ids == [] and c.logprobs == [] for c in remote)

    out = tmp_path / "served"
    rc = main(["eval", server, "--benchmarks", "gsm8k", "--limit", "3", "--n", "2", "--max-new-tokens", "5", "--quiet",
               "--out", str(out), "reward.verify_workers=0"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "eval" / "gsm8k.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["samples"]) == 2 for r in rows)
    assert all(1 <= s["length"] <= 5 and s["finish"] in ("stop", "length") for r in rows for s in r["samples"])
    assert json.loads((out / "eval" / "gsm8k.settings.json").read_text())["model"] == server
    assert "| gsm8k | 3 | 2 |" in capsys.readouterr().out


def test_unreachable_endpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(EndpointError, match=rf"cannot reach the endpoint {url}/models"):
        OpenAIEngine(url).check()
    out = tmp_path / "dead"
    assert main(["eval", url, "--benchmarks", "gsm8k", "--limit", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1lab: error: cannot reach the endpoint") and url in err and "\n" not in err
    assert not out.exists()
    # a benchmark typo is caught before the endpoint is even tried
    assert main(["eval", url, "--benchmarks", "gsm9k", "--out", str(out)]) == 2
    assert "unknown benchmark 'gsm9k'" in capsys.readouterr().err and not out.exists()
