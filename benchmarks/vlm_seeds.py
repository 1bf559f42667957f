"""Multimodal reasoning on a CPU: `recipes/tiny/vlm.yaml` (a tiny Qwen2-VL built offline, SFT on
verified teacher traces of the visual families, then GRPO with the pictures in the prompt), per seed,
with a control that tells reading the picture from guessing: the same held-out questions over a
blank white picture.

    /work/bin/heavy python benchmarks/vlm_seeds.py run --seed 0      # one seed (run seeds side by side)
    python benchmarks/vlm_seeds.py report --seeds 0 1                # figure + table from the saved runs

`run --set key=value ...` passes overrides to the pipeline (they are kept in the result file);
`run --rescore N` scores the SFT and GRPO checkpoints again with N samples a held-out problem and
reports those (one eval at the recipe's 8 samples moves by a couple of points on its own; the
pipeline's own figures stay in the file as `pipeline_eval`). A finished pipeline is not run again.
Every held-out score comes with its standard error over problems (each problem's avg@n is one
observation), and each gain (after GRPO minus after SFT; pictures minus blank pictures) with the
standard error of the paired per-problem differences: the same problems are scored both ways.

Writes benchmarks/results/vlm/<tag>seed<N>.json per seed, and `report` draws benchmarks/results/vlm/<tag>vlm.png
(training reward by GRPO step; held-out avg@4 after SFT, at every eval, after GRPO; the blank-picture
control after SFT and after GRPO; per family) and prints the markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "vlm"
FAMILIES = ("count_shapes", "bar_value", "digit_sum")  # the order of the table and the figure


def r1lab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "r1lab", *args], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def per_problem(eval_jsonl: Path) -> dict[str, float]:
    """Each held-out problem's avg@n, by id, from an eval's per-problem JSONL."""
    return {row["id"]: row["avg"] for row in map(json.loads, eval_jsonl.read_text().splitlines())}


def family(problem_id: str) -> str:
    return problem_id.rsplit("-", 1)[0]


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error, in % (0 for a single observation)."""
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return round(100 * m, 1), round(100 * (var / len(xs)) ** 0.5, 1)


def scores(avg: dict[str, float]) -> dict[str, list[float]]:
    """avg@n (%) and its standard error, per family and over all problems."""
    groups = defaultdict(list)
    for pid, a in avg.items():
        groups[family(pid)].append(a)
        groups["all"].append(a)
    return {k: list(mean_se(v)) for k, v in groups.items()}


def gains(after: dict[str, float], before: dict[str, float]) -> dict[str, list[float]]:
    """Paired gain (%) after - before over the same problems, with the standard error of the differences."""
    groups = defaultdict(list)
    for pid in after:
        groups[family(pid)].append(after[pid] - before[pid])
        groups["all"].append(after[pid] - before[pid])
    return {k: list(mean_se(v)) for k, v in groups.items()}


def eval_problems(problems_jsonl: Path) -> dict:
    """The held-out problems by id, parsed as r1lab parses them (pictures left as written: the
    trace checks need the scene metadata only)."""
    sys.path.insert(0, str(ROOT / "src"))
    from r1lab.records import Problem

    return {p.id: p for p in (Problem.from_dict(row) for row in map(json.loads, problems_jsonl.read_text().splitlines()))}


def trace_readings(problem, text: str) -> tuple[bool, bool] | None:
    """For a bar_value or count_shapes sample (`problem` an r1lab Problem): (its trace's readings of
    the picture are right, its answer follows from its own readings), or None when the trace is not
    in the teacher's form. bar_value: the listed height of the asked bar, and whether the answer is
    that listed height (a list that stops before the asked bar is not in the form); count_shapes:
    the four row counts, and whether the answer is their sum. Reads the traces of every round: the
    unnamed lists of rounds 1-5 (`heights a, b.`, `Rows: a, b, c, d.`) and the named ones."""
    from r1lab.tasks.visual import picture_items

    scene, fam = problem.metadata["scene"], problem.metadata["family"]
    answer = re.search(r"<answer>\s*(\d+)\s*</answer>", text)
    if not answer:
        return None
    if fam == "bar_value":
        named = re.findall(r"bar (\d+) is (\d+)[,.]", text.split("\n")[0])  # "bar 1 is 5, bar 2 is 4, ..."
        m = re.search(r"heights (\d+(?:, \d+)*)\.", text)  # the unnamed list of rounds 1-3
        if m:
            listed = [int(x) for x in m.group(1).split(",")]
        elif named and [int(i) for i, _ in named] == list(range(1, len(named) + 1)):
            listed = [int(h) for _, h in named]
        else:
            return None
        k = scene["bar"]
        if k >= len(listed):
            return None
        return listed[k] == scene["heights"][k], int(answer.group(1)) == listed[k]
    if fam == "count_shapes":
        m = re.search(r"Rows: (\d+(?:, \d+)*)\.", text)
        named = re.findall(r"row (\d+) has (\d+)[,.]", text.split("\n")[0])  # "row 1 has 0, row 2 has 1, ..."
        if m:
            rows = [int(x) for x in m.group(1).split(",")]
        elif [int(r) for r, _ in named] == [1, 2, 3, 4]:
            rows = [int(n) for _, n in named]
        else:
            return None
        return rows == picture_items(problem), int(answer.group(1)) == sum(rows)
    return None


def trace_stats(eval_jsonl: Path, problems_jsonl: Path) -> dict[str, dict[str, float]]:
    """Per family, over all samples: the share (%) whose readings are right, whose answer follows
    from their readings, and the accuracy of each of the two kinds (follows / does not)."""
    problems = eval_problems(problems_jsonl)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in map(json.loads, eval_jsonl.read_text().splitlines()):
        fam = family(row["id"])
        for s in row["samples"]:
            c = counts[fam]
            c["n"] += 1
            got = trace_readings(problems[row["id"]], s["text"])
            if got is None:
                continue
            reads, follows = got
            c["reads"] += reads
            c["follows"] += follows
            c[f"correct_{'follows' if follows else 'not'}"] += bool(s["correct"])
    pct = lambda a, b: round(100 * a / b, 1) if b else None  # noqa: E731
    return {fam: {"readings_right": pct(c["reads"], c["n"]), "answer_follows_trace": pct(c["follows"], c["n"]),
                  "accuracy_when_follows": pct(c["correct_follows"], c["follows"]),
                  "accuracy_when_not": pct(c["correct_not"], c["n"] - c["follows"])}
            for fam, c in counts.items() if c["reads"] or c["follows"]}


def readings_paid(eval_jsonl: Path, problems_jsonl: Path) -> dict[str, list[float]]:
    """Per family and over all: the mean `visual_readings` term of the samples (%, ± SE over problems):
    the share of the picture's quantities the samples read right, each item given one value."""
    problems = eval_problems(problems_jsonl)
    from r1lab.tasks.visual import readings_score

    groups = defaultdict(list)
    for row in map(json.loads, eval_jsonl.read_text().splitlines()):
        per = sum(readings_score(problems[row["id"]], s["text"]) for s in row["samples"]) / len(row["samples"])
        groups[family(row["id"])].append(per)
        groups["all"].append(per)
    return {k: list(mean_se(v)) for k, v in groups.items()}


def compare(new_dir: Path, old_dir: Path) -> dict:
    """Two pipelines from the same SFT model and held-out problems (one run directory each): the
    paired gain of the new one's GRPO model over the old one's, and each one's readings paid."""
    def rl_eval(d: Path) -> Path:
        return next((d / "01-rl" / "eval").glob("*.jsonl"))

    problems = new_dir / "prepare" / "data" / "eval.jsonl"
    sft_eval = next((new_dir / "00-sft" / "eval").glob("*.jsonl"))
    def train(d: Path, key: str) -> list:  # a training term's mean over steps 1-20 and over the last 20
        rows = [json.loads(line) for line in (d / "01-rl" / "metrics.jsonl").read_text().splitlines() if line.strip()]
        vals = [r[key] for r in rows if key in r]
        return [round(sum(vals[:20]) / 20, 3), round(sum(vals[-20:]) / 20, 3)] if len(vals) >= 20 else []

    return {"train_first20_last20": {f"{name}/{key}": train(d, f"reward/{key}") for name, d in (("new", new_dir), ("old", old_dir))
                                     for key in ("accuracy", "visual_readings")},
            "gain_new_rl_over_old_rl": gains(per_problem(rl_eval(new_dir)), per_problem(rl_eval(old_dir))),
            "readings_paid": {"sft": readings_paid(sft_eval, problems), "old_rl": readings_paid(rl_eval(old_dir), problems),
                              "new_rl": readings_paid(rl_eval(new_dir), problems)}}


def blank_copy(src: Path, dst: Path) -> None:
    """The held-out problems with every picture replaced by a white one of the same size."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "src"))
    from r1lab.images import decode_image, png_bytes, to_data_url

    rows = []
    for line in src.read_text().splitlines():
        row = json.loads(line)
        row["images"] = [to_data_url(png_bytes(Image.new("RGB", decode_image(u).size, (255, 255, 255)))) for u in row["images"]]
        rows.append(json.dumps(row))
    dst.write_text("\n".join(rows) + "\n")


def rescore(run_dir: Path, stage: str, ckpt: Path, n: int, seed: int, recipe: dict) -> Path:
    """The stage's checkpoint scored again on the held-out problems with n samples each (kept: a
    finished rescoring is not run again); returns its per-problem JSONL."""
    out = run_dir / f"rescore{n}-{stage}"
    results = out / "eval" / "results.jsonl"
    want = len((run_dir / "prepare" / "data" / "eval.jsonl").read_text().splitlines())
    if not (results.exists() and len(results.read_text().splitlines()) == want):
        r1lab("eval", str(ckpt), "--data", str(run_dir / "prepare" / "data" / "eval.jsonl"), "--n", str(n), "--out", str(out),
              "--quiet", f"seed={seed + 1000}", f"eval.temperature={recipe['eval']['temperature']}",
              f"sampling.max_new_tokens={recipe['sampling']['max_new_tokens']}", "rollout.engine=hf")
    return results


def run(seed: int, out: Path, tag: str = "", overrides: list[str] = (), rescore_n: int = 0) -> None:
    import yaml

    name = f"vlm-s{seed}"
    run_dir = out / name
    t = time.time()
    if not (run_dir / "summary.json").exists():  # a finished pipeline is kept: only the control runs again
        r1lab("pipeline", str(ROOT / "recipes" / "tiny" / "vlm.yaml"), f"out_dir={out}", f"name={name}", f"seed={seed}",
              f"data.seed={seed}", *overrides, "--quiet")
        (run_dir / "pipeline_seconds.txt").write_text(f"{time.time() - t:.1f}\n")
    seconds = float((run_dir / "pipeline_seconds.txt").read_text()) if (run_dir / "pipeline_seconds.txt").exists() else None
    recipe = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    blank = run_dir / "held_out_blank.jsonl"
    blank_copy(run_dir / "prepare" / "data" / "eval.jsonl", blank)
    evals = {"sft": next((run_dir / "00-sft" / "eval").glob("*.jsonl")), "rl": next((run_dir / "01-rl" / "eval").glob("*.jsonl"))}
    ckpts = {"sft": run_dir / "00-sft" / "checkpoints" / "sft", "rl": run_dir / "01-rl" / "checkpoints" / "rl"}
    pipeline_scores = {stage: scores(per_problem(path)) for stage, path in evals.items()}
    if rescore_n:  # the pipeline's own evals (recipe eval.n) are replaced by n samples a problem
        evals = {stage: rescore(run_dir, stage, ckpts[stage], rescore_n, seed, recipe) for stage in evals}
    avg = {stage: per_problem(path) for stage, path in evals.items()}
    for stage, ckpt in ckpts.items():
        # the recipe's eval settings (a pipeline recipe is not an eval config: its settings are given here)
        r1lab("eval", str(ckpt), "--data", str(blank), "--n", str(recipe["eval"]["n"]), "--out", str(run_dir / f"blank-{stage}"),
              "--quiet", f"seed={seed}", f"eval.temperature={recipe['eval']['temperature']}",
              f"sampling.max_new_tokens={recipe['sampling']['max_new_tokens']}", "rollout.engine=hf")
        avg[f"blank_{stage}"] = per_problem(run_dir / f"blank-{stage}" / "eval" / "results.jsonl")
    rows = [json.loads(line) for line in (run_dir / "01-rl" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sft, rl = scores(avg["sft"]), scores(avg["rl"])
    held = [(0, sft["all"][0])] + [(r["step"], round(100 * r["eval/avg"], 1)) for r in rows if "eval/avg" in r]
    held.append((rows[-1]["step"], rl["all"][0]))
    result = {"seed": seed, "seconds": round(seconds, 1) if seconds else None, "overrides": list(overrides),
              "families": recipe["data"]["tasks"], "eval": {"problems": len(avg["sft"]), "n": rescore_n or recipe["eval"]["n"],
                                                            "temperature": recipe["eval"]["temperature"],
                                                            "blank_n": recipe["eval"]["n"]},
              "pipeline_eval": {"n": recipe["eval"]["n"], **pipeline_scores},
              "held_out": held, "sft": sft, "rl": rl,
              "blank": {"sft": scores(avg["blank_sft"]), "rl": scores(avg["blank_rl"])},
              "gain_rl_over_sft": gains(avg["rl"], avg["sft"]),
              "gain_blank_rl_over_sft": gains(avg["blank_rl"], avg["blank_sft"]),
              "pictures_over_blank": {"sft": gains(avg["sft"], avg["blank_sft"]), "rl": gains(avg["rl"], avg["blank_rl"])},
              "traces": {stage: trace_stats(path, run_dir / "prepare" / "data" / "eval.jsonl") for stage, path in evals.items()},
              "reward": [(r["step"], r["reward/total"]) for r in rows],
              "accuracy": [(r["step"], r.get("reward/accuracy")) for r in rows],
              "zero_variance_groups": [(r["step"], r.get("batch/zero_variance_groups")) for r in rows]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{tag}seed{seed}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("seed", "seconds", "sft", "rl", "blank", "gain_rl_over_sft")}))


def _value(x):
    """A score as saved: [mean, se] (this file's format) or a bare mean (rounds 1-2)."""
    return x[0] if isinstance(x, list) else x


def _pm(x) -> str:
    return f"{x[0]} ± {x[1]}" if isinstance(x, list) else str(x)


def report(seeds: list[int], tag: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads((RESULTS / f"{tag}seed{s}.json").read_text()) for s in seeds]
    fams = [f for f in FAMILIES if f in runs[0].get("families", FAMILIES)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in runs:
        steps, acc = zip(*r["accuracy"])
        raw, = axes[0].plot(steps, acc, alpha=0.25)
        window = 20  # the per-step accuracy of 128 samples is noisy: its running mean shows the trend
        smooth = [sum(acc[max(0, i - window + 1):i + 1]) / len(acc[max(0, i - window + 1):i + 1]) for i in range(len(acc))]
        axes[0].plot(steps, smooth, color=raw.get_color(), label=f"seed {r['seed']} (mean of {window} steps)")
        line, = axes[1].plot(*zip(*r["held_out"]), marker="o", label=f"seed {r['seed']}: pictures")
        last = r["held_out"][-1][0]
        for x, stage in ((0, "sft"), (last, "rl")):
            if isinstance(r[stage]["all"], list):
                axes[1].errorbar([x], [r[stage]["all"][0]], yerr=[2 * r[stage]["all"][1]], color=line.get_color(), capsize=4)
        axes[1].plot([0, last], [_value(r["blank"]["sft"]["all"]), _value(r["blank"]["rl"]["all"])], ls="--", marker="x",
                     color=line.get_color(), label=f"seed {r['seed']}: blank pictures")
    width = 0.8 / (2 * len(runs))
    for i, r in enumerate(runs):
        for j, stage in enumerate(("sft", "rl")):
            x = [k + (2 * i + j) * width for k in range(len(fams))]
            vals = [r[stage][f] for f in fams]
            err = [2 * v[1] for v in vals] if isinstance(vals[0], list) else None
            axes[2].bar(x, [_value(v) for v in vals], width, yerr=err, capsize=3,
                        label=f"seed {r['seed']} after {'GRPO' if stage == 'rl' else 'SFT'}")
            axes[2].scatter(x, [_value(r["blank"][stage][f]) for f in fams], marker="x", color="black", zorder=3,
                            label="blank pictures" if i == 0 and j == 0 else None)
    axes[2].set_xticks([k + 0.4 - width / 2 for k in range(len(fams))], fams)
    ev = runs[0].get("eval", {})
    what = f"{ev['problems']} problems x {ev['n']} samples, T={ev['temperature']}" if ev else "avg@4"
    if ev.get("n") and runs[0].get("pipeline_eval") and ev["n"] != runs[0]["pipeline_eval"]["n"]:
        what += f" (steps between: {runs[0]['pipeline_eval']['n']})"
    axes[0].set(title="GRPO training accuracy per step", xlabel="GRPO step", ylabel="fraction correct")
    axes[1].set(title=f"held-out avg@n (%), bars: 2 SE\n{what}", xlabel="GRPO step (0 = after SFT)")
    axes[2].set(title="held-out avg@n by family (bars: 2 SE, x: blank)", ylabel="%")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if host := os.environ.get("VLM_HOST_NOTE"):
        fig.suptitle(host, fontsize=8, y=0.995)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{tag}vlm.png", dpi=90)
    plt.close(fig)
    head = " | ".join(fams)
    print(f"| seed | after | all | {head} | all, blank pictures | {' / '.join(fams)}, blank | seconds |")
    print("|---:|---|---:|" + "---:|" * len(fams) + "---:|---:|---:|")
    for r in runs:
        for stage in ("sft", "rl"):
            cells = " | ".join(_pm(r[stage][f]) for f in ("all", *fams))
            blank = " / ".join(str(_value(r["blank"][stage][f])) for f in fams)
            after = "SFT" if stage == "sft" else f"GRPO ({r['held_out'][-1][0]})"
            print(f"| {r['seed']} | {after} | {cells} | {_pm(r['blank'][stage]['all'])} | {blank} | "
                  f"{r['seconds'] if stage == 'rl' else ''} |")
    if all("gain_rl_over_sft" in r for r in runs):
        print()
        print(f"| seed | gain GRPO - SFT, all | {head} | same gain over blank pictures, all | pictures - blank after SFT / after GRPO, all |")
        print("|---:|---:|" + "---:|" * len(fams) + "---:|---:|")
        for r in runs:
            g = r["gain_rl_over_sft"]
            pb = r["pictures_over_blank"]
            print(f"| {r['seed']} | {_pm(g['all'])} | {' | '.join(_pm(g[f]) for f in fams)} | "
                  f"{_pm(r['gain_blank_rl_over_sft']['all'])} | {_pm(pb['sft']['all'])} / {_pm(pb['rl']['all'])} |")
    if all("traces" in r for r in runs):
        print()
        print("| seed | after | family | readings right | answer follows its readings | accuracy when it follows / when not |")
        print("|---:|---|---|---:|---:|---:|")
        for r in runs:
            for stage in ("sft", "rl"):
                for fam, t in sorted(r["traces"][stage].items()):
                    print(f"| {r['seed']} | {'SFT' if stage == 'sft' else 'GRPO'} | {fam} | {t['readings_right']} | "
                          f"{t['answer_follows_trace']} | {t['accuracy_when_follows']} / {t['accuracy_when_not']} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", default="/tmp/r1lab-vlm")
    p.add_argument("--tag", default="", help="prefix of the result files (e.g. round2_)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="pipeline overrides, e.g. train.lr=1e-4")
    p.add_argument("--rescore", type=int, default=0, metavar="N",
                   help="score the SFT and GRPO checkpoints again with N samples a held-out problem (the pipeline's "
                        "evals at eval.n move by a few points on their own) and report those")
    p = sub.add_parser("compare", help="paired gain of one run's GRPO model over another's from the same SFT model")
    p.add_argument("new_dir")
    p.add_argument("old_dir")
    p = sub.add_parser("report")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--tag", default="")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.seed, Path(args.out), args.tag, args.set, args.rescore)
    elif args.cmd == "compare":
        print(json.dumps(compare(Path(args.new_dir), Path(args.old_dir))))
    else:
        report(args.seeds, args.tag)


if __name__ == "__main__":
    main()
