"""Language mixing and accuracy by language on SmolLM2-135M-Instruct: the base model, then GRPO on
English prompts only, with and without the language-consistency reward (two seeds each).

    r1lab models prepare smollm2-135m-instruct
    OMP_NUM_THREADS=1 /work/bin/heavy python benchmarks/language_mixing_smollm2.py [--seeds 0,1] [--steps 24]

The setting. One-step word arithmetic (`arithmetic_<lang>`, difficulty 1: "Start with seven. Add
three. What is the result?") in the seven languages of tasks/multilingual.py. The held-out set is
parallel: the same `--held` problems told in every language, so the languages are compared on equal
mathematics. GRPO trains on the other English problems only, from the base model (no SFT), with the
R1-Zero recipe (recipes/real/smollm2_r1_zero.yaml: its system prompt and `<think>` prefill, T 0.7,
96 new tokens, full fine-tuning, no KL) at a smaller step: 8 prompts x 4 samples. The reward is
accuracy + 0.5 format, plus 0 (*plain*) or 0.5 (*lc*) `language_consistency` (each prompt's own
language, here English). Held out: `--n` samples per problem at T 0.7.

Writes benchmarks/results/language_mixing_smollm2/{results.json, language_mixing_smollm2.png} and
prints the table for BENCHMARKS.md. Run directories go to --work; a finished run is not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from language_mixing import CONSISTENT, PLAIN, by_language, plot_by_language, step_curve  # noqa: E402
from r1lab.records import save_problems  # noqa: E402
from r1lab.tasks import get_task  # noqa: E402
from r1lab.tasks.multilingual import MULTILINGUAL  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "language_mixing_smollm2"
RECIPE = ROOT / "recipes" / "real" / "smollm2_r1_zero.yaml"
MODEL = "smollm2-135m-instruct"


def build_data(work: Path, held: int, difficulty: int) -> dict:
    """`held` English problems told in every language (held out), and every other distinct English
    problem of that difficulty for training."""
    en = get_task("arithmetic_en")
    rng, seen, pool = random.Random(0), set(), []
    for _ in range(20000):  # difficulty 1 has 243 distinct chains; draw until they stop coming
        p = en.generate(rng, difficulty)
        key = en.dedupe_key(p)
        if key not in seen:
            seen.add(key)
            pool.append(p)
    for i, p in enumerate(pool):
        p.id = f"arith-en-{i:04d}"
    held_en, train = pool[:held], pool[held:]
    held_all = [get_task(f"arithmetic_{lang}").translate(p) for p in held_en for lang in MULTILINGUAL]
    work.mkdir(parents=True, exist_ok=True)
    paths = {"rl_en": work / "rl_en.jsonl", "held": work / "heldout.jsonl"}
    save_problems(paths["rl_en"], train)
    save_problems(paths["held"], held_all)
    return {"paths": paths, "rl_en": len(train), "held": len(held_all), "held_per_language": held}


def r1lab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "r1lab", *args, "--quiet"], check=True, cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                        "PYTHONPATH": str(ROOT / "src")})


def eval_settings(n: int) -> list[str]:
    return [f"eval.n={n}", "eval.temperature=0.7", f"eval.ks=[1,{n}]", "eval.max_new_tokens=96",
            "reward.verify_workers=0"]


def base_eval(work: Path, paths: dict, n: int) -> Path:
    out = work / "base"
    rows = out / "eval" / "results.jsonl"
    if not rows.is_file():
        r1lab("eval", MODEL, "--recipe", str(RECIPE), "--data", str(paths["held"]), "--n", str(n),
              "--temperature", "0.7", "--max-new-tokens", "96", "--out", str(out), *eval_settings(n))
    return rows


def grpo(work: Path, paths: dict, seed: int, consistency: bool, steps: int, n: int) -> Path:
    name = f"grpo-{'lc' if consistency else 'plain'}-s{seed}"
    lc = 0.5 if consistency else 0.0
    if not (work / name / "eval" / "rl.jsonl").is_file():
        r1lab("rl", str(RECIPE), f"out_dir={work}", f"name={name}", f"seed={seed}",
              f"data.train_path={paths['rl_en']}", f"data.eval_path={paths['held']}",
              f"train.steps={steps}", "train.prompts_per_step=8", "train.group_size=4", "train.eval_every=0",
              "train.save_every=0", "train.warmup_steps=2", "eval.at_start=false",
              f"reward.terms={{accuracy: 1.0, format: 0.5, language_consistency: {lc}}}", *eval_settings(n))
    return work / name


def plot(results: dict, path: Path, title: str) -> None:
    plot_by_language(results, path, [("base model", "base", "tab:gray"), PLAIN, CONSISTENT],
                     [("accuracy", "held-out accuracy (avg@n, T 0.7)"),
                      ("consistency", "share of the reasoning in the prompt's language"),
                      ("mixed", "share of responses mixing languages")], title, (15, 3.8))


def table(results: dict) -> str:
    """Per language accuracy / consistency (%), then the means and the mixing measures over all seven."""
    langs = list(MULTILINGUAL)
    lines = ["| arm | seed | " + " | ".join(f"{lang} acc / cons" for lang in langs)
             + " | mean acc | mean cons | mixed | no words |", "|---|---:|" + "---:|" * (len(langs) + 4)]
    for arm, runs in results["arms"].items():
        for r in runs:
            b = r["by_language"]
            cells = [f"{100 * b[lang]['accuracy']:.0f} / {100 * b[lang]['consistency']:.0f}" for lang in langs]
            lines.append(f"| {arm} | {r['seed']} | " + " | ".join(cells)
                         + "".join(f" | {100 * mean(b[lang][k] for lang in langs):.1f}"
                                   for k in ("accuracy", "consistency", "mixed", "no_words")) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--arms", default="plain,lc", help="which GRPO arms to run, in order per seed")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--held", type=int, default=16, help="held-out problems (each told in every language)")
    ap.add_argument("--n", type=int, default=4, help="held-out samples per problem")
    ap.add_argument("--difficulty", type=int, default=1)
    ap.add_argument("--host", default="", help="the host line for the figure")
    ap.add_argument("--work", default="/tmp/r1lab-language-mixing-smollm2")
    ap.add_argument("--collect", action="store_true", help="run nothing: table and figure from the finished runs")
    args = ap.parse_args()
    work = Path(args.work)
    t0 = time.time()
    data = build_data(work, args.held, args.difficulty)
    print(f"data: {data['rl_en']} English RL prompts, {data['held']} held out "
          f"({args.held} per language)", flush=True)
    results = {"settings": vars(args), "data": {k: v for k, v in data.items() if k != "paths"},
               "arms": {"base": [], "plain": [], "lc": []}}
    OUT.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results["seconds"] = round(time.time() - t0, 1)
        (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        plot(results, OUT / "language_mixing_smollm2.png",
             f"SmolLM2-135M-Instruct: {args.steps} steps of English-only GRPO (8 prompts x 4), one-step word "
             f"arithmetic, {args.held} parallel held-out problems x {args.n} samples per language (dots: seeds)"
             + (f"\n{args.host}" if args.host else ""))
        print(table(results), flush=True)

    t = time.time()
    if not args.collect or (work / "base" / "eval" / "results.jsonl").is_file():
        rows = base_eval(work, data["paths"], args.n)
        results["arms"]["base"].append({"seed": 0, "seconds": round(time.time() - t, 1), "by_language": by_language(rows)})
        save()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            t = time.time()
            if args.collect and not (work / f"grpo-{arm}-s{seed}" / "eval" / "rl.jsonl").is_file():
                print(f"grpo-{arm}-s{seed}: not finished, left out", flush=True)
                continue
            run = grpo(work, data["paths"], seed, arm == "lc", args.steps, args.n)
            metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            results["arms"][arm].append({"seed": seed, "train_seconds": round(metrics[-1]["time"]) if metrics else None,
                                         "by_language": by_language(run / "eval" / "rl.jsonl"),
                                         "train_curve": step_curve(run)})
            print(f"{run.name}: {time.time() - t:.0f} s", flush=True)
            save()  # after every run, so a run cut short by the deadline leaves the ones before it


if __name__ == "__main__":
    main()
