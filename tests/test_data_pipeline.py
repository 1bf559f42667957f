"""The pipeline YAML end to end through the CLI, the manifest, and failures that leave nothing half-written."""

import json
import os
import subprocess
import sys

import pytest

from r1lab.data.pipeline import load_pipeline, parse_pipeline, run_pipeline
from r1lab.errors import ConfigError, DataError

RAW = [
    {"question": "A farmer has 12 cows and buys 7 more at the market on Monday. How many cows does he have now?", "final_answer": "19",
     "solution": "12 + 7 = 19, so \\boxed{19}"},
    {"question": "A farmer has 15 cows and buys 4 more at the market on Monday. How many cows does he have now?", "final_answer": "19",
     "solution": "\\boxed{19}"},  # a number-changed near-duplicate of row 1
    {"question": "What is the smallest prime number greater than 50?", "final_answer": "53", "solution": "\\boxed{51}"},  # wrong trace
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many?",
     "final_answer": "72", "solution": "\\boxed{72}"},  # contaminated (a benchmark item)
    {"question": "Compute the sum of the first ten positive odd integers.", "final_answer": "100", "solution": "<answer>100</answer>"},
]
BENCH = [{"id": "gsm-0", "problem": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
          "answer": "72"}]


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RAW), encoding="utf-8")
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in BENCH), encoding="utf-8")
    (tmp_path / "pipe.yaml").write_text(f"""
output: {tmp_path}/out/curated.jsonl
steps:
  - import: {{paths: [{tmp_path}/raw.jsonl], mapping: {{question: prompt, final_answer: answer}}}}
  - dedup
  - decontaminate: {{benchmarks: [{tmp_path}/bench.jsonl]}}
  - verify: {{field: solution, workers: 0}}
  - inspect: {{}}
""", encoding="utf-8")
    return tmp_path


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "r1lab.cli", "data", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_pipeline_yaml_end_to_end_through_the_cli(files):
    res = _cli("run", str(files / "pipe.yaml"), cwd=files)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (files / "out/curated.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["raw-1", "raw-5"]
    assert rows[0]["metadata"]["absorbed"] == ["raw-2"]
    manifest = json.loads((files / "out/curated.manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["rows_out"] == 2
    steps = {s["step"]: s for s in manifest["steps"]}
    assert [(s["step"], s["rows_in"], s["rows_out"]) for s in manifest["steps"]] == [
        ("import", 0, 5), ("dedup", 5, 4), ("decontaminate", 4, 3), ("verify", 3, 2), ("inspect", 2, 2)]
    assert steps["dedup"]["drops"] == {"near_duplicate": [["raw-2", "raw-1"]]}
    assert steps["decontaminate"]["drops"]["contaminated"][0][0] == "raw-4"
    assert steps["verify"]["dropped"] == {"trace_wrong": 1}
    assert all(s["seconds"] >= 0 for s in manifest["steps"]) and manifest["peak_rss_mb"] > 0
    hits = [json.loads(line) for line in open(steps["decontaminate"]["reports"][0])]
    assert hits[0]["id"] == "raw-4" and hits[0]["benchmark_id"] == "gsm-0"
    assert all(os.path.getsize(p) > 0 for p in steps["inspect"]["reports"])
    assert "dedup" in res.stdout and "wrote" in res.stdout


def test_overrides_and_single_step_commands(files):
    res = _cli("run", str(files / "pipe.yaml"), "dedup.mask_numbers=false", f"output={files}/o2.jsonl", "--quiet", cwd=files)
    assert res.returncode == 0, res.stderr
    assert len((files / "o2.jsonl").read_text().splitlines()) == 3  # the number-changed row is kept now
    res = _cli("import", str(files / "raw.jsonl"), "-o", str(files / "p.jsonl"), "--map", "question->prompt", "--map", "final_answer->answer", cwd=files)
    assert res.returncode == 0, res.stderr
    res = _cli("dedup", str(files / "p.jsonl"), "-o", str(files / "d.jsonl"), "threshold=0.9", cwd=files)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((files / "d.manifest.json").read_text())
    assert manifest["steps"][1]["settings"]["threshold"] == 0.9 and manifest["rows_out"] == 4
    res = _cli("decontaminate", str(files / "p.jsonl"), "-o", str(files / "c.jsonl"), "--benchmark", str(files / "bench.jsonl"), cwd=files)
    assert res.returncode == 0 and len((files / "c.jsonl").read_text().splitlines()) == 4
    res = _cli("inspect", str(files / "p.jsonl"), str(files / "c.jsonl"), "--out", str(files / "ins"), cwd=files)
    assert res.returncode == 0, res.stderr
    assert (files / "ins" / "overlap.png").exists() and "overlap" in res.stdout


def test_a_failing_run_leaves_no_output_and_says_why(files):
    (files / "out").mkdir()
    (files / "out/curated.jsonl").write_text("previous good output\n")
    with open(files / "raw.jsonl", "a") as f:
        f.write('{"question": "broken row", "final_answer": \n')
    res = _cli("run", str(files / "pipe.yaml"), cwd=files)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"r1lab: error: {files}/raw.jsonl:6: not valid JSON (Expecting value, column 44)"]
    assert (files / "out/curated.jsonl").read_text() == "previous good output\n"  # untouched, no half-written file
    assert not [p for p in (files / "out").iterdir() if p.name.startswith(".")]  # no temporary left behind
    manifest = json.loads((files / "out/curated.manifest.json").read_text())
    assert manifest["status"] == "failed" and "raw.jsonl:6" in manifest["error"]
    res = _cli("run", str(files / "pipe.yaml"), "--lenient", cwd=files)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((files / "out/curated.manifest.json").read_text())
    assert manifest["steps"][0]["drops"] == {"malformed": [[f"{files}/raw.jsonl:6", "not valid JSON (Expecting value, column 44)"]]}


def test_pipeline_config_errors(files):
    with pytest.raises(ConfigError, match="unknown step 'dedupe'.*did you mean 'dedup'"):
        parse_pipeline({"output": "x.jsonl", "steps": ["import", "dedupe"]}, "p.yaml")
    with pytest.raises(ConfigError, match="first step must be 'import'"):
        parse_pipeline({"output": "x.jsonl", "steps": ["dedup"]}, "p.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'dedup.treshold'"):
        parse_pipeline({"output": "x.jsonl", "steps": ["import", {"dedup": {"treshold": 0.5}}]}, "p.yaml")
    with pytest.raises(ConfigError, match="no 'output'"):
        parse_pipeline({"steps": ["import"]}, "p.yaml")
    with pytest.raises(ConfigError, match="has no 'filter' step"):
        load_pipeline(files / "pipe.yaml", ["filter.min_pass=0.1"])
    (files / "empty.jsonl").write_text("")
    p = parse_pipeline({"output": str(files / "e.jsonl"), "steps": [{"import": {"paths": [str(files / "empty.jsonl")]}}]}, "p.yaml")
    with pytest.raises(DataError, match="empty file"):
        run_pipeline(p)
    assert not (files / "e.jsonl").exists()


def test_every_step_reads_its_inputs_as_import_does(files):
    """A `problem`-column file (the benchmark schema) needs no mapping; odd column names take --map on any step."""
    (files / "prob.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "problem": r["question"], "answer": r["final_answer"]}) + "\n"
                                              for i, r in enumerate(RAW)), encoding="utf-8")
    res = _cli("decontaminate", str(files / "prob.jsonl"), "-o", str(files / "c.jsonl"), "--benchmark", str(files / "bench.jsonl"), cwd=files)
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["id"] for line in (files / "c.jsonl").read_text().splitlines()] == ["q0", "q1", "q2", "q4"]
    manifest = json.loads((files / "c.manifest.json").read_text())
    assert manifest["steps"][0]["notes"]["detected_columns"] == {str(files / "prob.jsonl"): {"problem": "prompt"}}
    assert manifest["steps"][1]["drops"]["contaminated"][0][0] == "q3"
    res = _cli("dedup", str(files / "raw.jsonl"), "-o", str(files / "d.jsonl"), "--map", "final_answer->answer", cwd=files)
    assert res.returncode == 0, res.stderr  # question -> prompt found, final_answer mapped (it is found too)
    (files / "odd.jsonl").write_text(json.dumps({"text": "What is 2+2?", "label": "4", "trace": "<answer>4</answer>"}) + "\n", encoding="utf-8")
    res = _cli("dedup", str(files / "odd.jsonl"), "-o", str(files / "f.jsonl"), cwd=files)
    assert res.returncode == 2 and "no usable 'prompt'" in res.stderr and "--map COLUMN->prompt" in res.stderr
    res = _cli("verify", str(files / "odd.jsonl"), "-o", str(files / "v.jsonl"), "--map", "text->prompt", "--map", "label->answer",
               "field=trace", "workers=0", cwd=files)
    assert res.returncode == 0, res.stderr
    assert json.loads((files / "v.jsonl").read_text())["prompt"] == "What is 2+2?"
    res = _cli("inspect", str(files / "odd.jsonl"), "--out", str(files / "ins2"), "--map", "text->prompt", "--map", "label->answer", cwd=files)
    assert res.returncode == 0, res.stderr
