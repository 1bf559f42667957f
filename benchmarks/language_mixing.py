"""Language mixing and accuracy by language, before and after a short English-only GRPO, with and
without the language-consistency reward, on the tiny model (two seeds).

    OMP_NUM_THREADS=1 /work/bin/heavy python benchmarks/language_mixing.py [--seeds 0,1] [--steps 30]

The setting. Word arithmetic (`arithmetic_<lang>`, difficulty 2) in English, Chinese, French,
German, Spanish, Russian and Japanese. SFT (one checkpoint, shared by every GRPO run) on teacher
traces of all seven languages, of which a planted share `--mixed` thinks in two languages: each step
line of such a trace is written in the prompt's language or in a second one (English for the other
languages, a random other language for English) with equal chance - the language mixing R1-Zero
showed. GRPO then trains on English prompts only, paid by accuracy + 0.1 format, with or without
0.5 `language_consistency`. Held out: 24 problems per language, 4 samples each at temperature 1.

Writes benchmarks/results/language_mixing/{results-STEPS.json, language_mixing-STEPS.png} and prints the table
for BENCHMARKS.md. Run directories go to --work (default /tmp/r1lab-language-mixing).
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

from r1lab.records import Problem, save_problems  # noqa: E402
from r1lab.tasks import generate_splits, get_task  # noqa: E402
from r1lab.tasks.multilingual import MULTILINGUAL  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "language_mixing"


def mixed_trace(problem: Problem, rng: random.Random) -> str:
    """The teacher trace with each step line in the prompt's language or a second one, at random."""
    lang = problem.metadata["language"]
    other = "en" if lang != "en" else rng.choice([x for x in MULTILINGUAL if x != "en"])
    own = get_task(f"arithmetic_{lang}").teacher_trace(problem)
    alien = get_task(f"arithmetic_{other}").teacher_trace(problem)
    own_lines, alien_lines = own.split("\n"), alien.split("\n")
    # line 0 is "<think>lead", the last is "<answer>..."; the step lines between line up one to one
    lines = [own_lines[0]] + [o if rng.random() < 0.5 else a for o, a in zip(own_lines[1:-1], alien_lines[1:-1])]
    return "\n".join(lines + own_lines[-1:])


def build_data(work: Path, per_language_sft: int, per_language_rl: int, held_per_language: int, mixed: float) -> dict:
    names = [f"arithmetic_{lang}" for lang in MULTILINGUAL]
    k = len(names)
    train, held = generate_splits(names, k * (per_language_sft + per_language_rl), k * held_per_language, 2, seed=0)
    rng = random.Random(0)
    sft, rl_en, by_lang = [], [], {lang: 0 for lang in MULTILINGUAL}
    for p in train:
        lang = p.metadata["language"]
        if by_lang[lang] < per_language_sft:
            by_lang[lang] += 1
            planted = rng.random() < mixed
            trace = mixed_trace(p, rng) if planted else get_task(p.metadata["family"]).teacher_trace(p)
            sft.append(Problem(**{**p.to_dict(), "metadata": {**p.metadata, "response": trace, "planted_mix": planted}}))
        elif lang == "en":
            rl_en.append(p)
    rng.shuffle(sft)
    work.mkdir(parents=True, exist_ok=True)
    paths = {"sft": work / "sft.jsonl", "rl_en": work / "rl_en.jsonl", "held": work / "heldout.jsonl"}
    save_problems(paths["sft"], sft)
    save_problems(paths["rl_en"], rl_en)
    save_problems(paths["held"], held)
    return {"paths": paths, "sft": len(sft), "rl_en": len(rl_en), "held": len(held),
            "planted_mixed": sum(p.metadata["planted_mix"] for p in sft)}


def r1lab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "r1lab", *args, "--quiet"], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")})


COMMON = ["eval.n=4", "eval.ks=[1,4]", "sampling.max_new_tokens=96", "reward.verify_workers=0"]


def sft(work: Path, paths: dict, n_sft: int, epochs: int) -> Path:
    run = work / "sft"
    if not (run / "checkpoints" / "sft").is_dir():
        r1lab("sft", str(ROOT / "recipes" / "tiny" / "sft.yaml"), f"out_dir={work}", "name=sft",
              f"data.train_path={paths['sft']}", f"data.eval_path={paths['held']}", f"data.sft_size={n_sft}",
              f"sft.epochs={epochs}", *COMMON)
    return run / "checkpoints" / "sft"


def grpo(work: Path, paths: dict, ckpt: Path, seed: int, consistency: bool, steps: int) -> Path:
    name = f"grpo-{'lc' if consistency else 'plain'}-{steps}steps-s{seed}"
    terms = "{accuracy: 1.0, format: 0.1, language_consistency: 0.5}" if consistency else \
        "{accuracy: 1.0, format: 0.1, language_consistency: 0.0}"
    if not (work / name / "eval" / "rl.jsonl").is_file():
        r1lab("rl", str(ROOT / "recipes" / "tiny" / "grpo.yaml"), f"out_dir={work}", f"name={name}",
              f"init_from={ckpt}", f"seed={seed}", f"data.train_path={paths['rl_en']}",
              f"data.eval_path={paths['held']}", "data.sft_size=0", f"train.steps={steps}",
              "train.prompts_per_step=8", "train.group_size=4", f"train.eval_every={steps}", f"reward.terms={terms}",
              *COMMON)
    return work / name


def by_language(rows_path: Path) -> dict:
    from r1lab.eval.run import language_summary

    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    out = {}
    for lang in MULTILINGUAL:
        mine = [r for r in rows if r.get("language") == lang]
        s = language_summary(mine)
        out[lang] = {"accuracy": s[f"lang/{lang}/accuracy"], "consistency": s["lang/consistency"],
                     "mixed": s["lang/mixed"], "no_words": s["lang/no_words"]}
    return out


def step_curve(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r.get("lang/consistency"), r.get("lang/mixed")) for r in rows if "lang/consistency" in r]


PLAIN = ("GRPO (en), no consistency", "plain", "tab:blue")
CONSISTENT = ("GRPO (en) + consistency 0.5", "lc", "tab:orange")


def plot_by_language(results: dict, path: Path, arms: list[tuple[str, str, str]], panels: list[tuple[str, str]],
                     title: str, figsize: tuple[float, float]) -> None:
    """One panel per (metric, panel title): a bar per language and arm (label, key in
    results["arms"], colour) at the mean over its seeds, each seed a dot; arms without runs left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(MULTILINGUAL)
    fig, axes = plt.subplots(1, len(panels), figsize=figsize)
    width = 0.26
    for ax, (metric, name) in zip(axes, panels):
        for i, (label, arm, color) in enumerate(arms):
            runs = results["arms"][arm]
            if not runs:
                continue
            values = [[r["by_language"][lang][metric] for r in runs] for lang in langs]
            xs = [x + (i - 1) * width for x in range(len(langs))]
            ax.bar(xs, [mean(v) for v in values], width, color=color, alpha=0.85,
                   label=f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
            for x, v in zip(xs, values):  # each seed as a dot
                ax.plot([x] * len(v), v, "k.", ms=4)
        ax.set_xticks(range(len(langs)), langs)
        ax.set(title=name, ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot(results: dict, path: Path, steps: int) -> None:
    plot_by_language(results, path, [("after SFT", "sft", "tab:gray"), PLAIN, CONSISTENT],
                     [("accuracy", "held-out accuracy (avg@4)"), ("mixed", "share of responses mixing languages")],
                     f"tiny model: {steps} steps of English-only GRPO from a multilingual SFT with planted mixing "
                     "(dots: seeds)", (11, 3.6))


def table(results: dict) -> str:
    lines = ["| arm | seed | " + " | ".join(f"{lang} acc / mix" for lang in MULTILINGUAL) + " | mean acc | mean mix | mean consistency |",
             "|---|---:|" + "---:|" * (len(MULTILINGUAL) + 3)]
    for arm, runs in results["arms"].items():
        for r in runs:
            b = r["by_language"]
            cells = [f"{100 * b[lang]['accuracy']:.0f} / {100 * b[lang]['mixed']:.0f}" for lang in MULTILINGUAL]
            lines.append(f"| {arm} | {r['seed']} | " + " | ".join(cells) +
                         f" | {100 * mean(b[lang]['accuracy'] for lang in MULTILINGUAL):.1f} "
                         f"| {100 * mean(b[lang]['mixed'] for lang in MULTILINGUAL):.1f} "
                         f"| {mean(b[lang]['consistency'] for lang in MULTILINGUAL):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--sft-per-language", type=int, default=300)
    ap.add_argument("--rl-per-language", type=int, default=200)
    ap.add_argument("--held-per-language", type=int, default=24)
    ap.add_argument("--mixed", type=float, default=0.3, help="share of SFT traces planted with two languages")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--work", default="/tmp/r1lab-language-mixing")
    args = ap.parse_args()
    work = Path(args.work)
    t0 = time.time()
    data = build_data(work, args.sft_per_language, args.rl_per_language, args.held_per_language, args.mixed)
    print(f"data: {data['sft']} SFT traces ({data['planted_mixed']} planted mixed), {data['rl_en']} English RL "
          f"prompts, {data['held']} held out", flush=True)
    ckpt = sft(work, data["paths"], data["sft"], args.epochs)
    sft_eval = by_language(work / "sft" / "eval" / "sft.jsonl")
    results = {"settings": vars(args), "data": {k: v for k, v in data.items() if k != "paths"},
               "arms": {"sft": [{"seed": 0, "by_language": sft_eval}], "plain": [], "lc": []}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for consistency in (False, True):
            t = time.time()
            run = grpo(work, data["paths"], ckpt, seed, consistency, args.steps)
            results["arms"]["lc" if consistency else "plain"].append(
                {"seed": seed, "seconds": round(time.time() - t, 1), "by_language": by_language(run / "eval" / "rl.jsonl"),
                 "train_curve": step_curve(run)})
            print(f"{run.name}: {time.time() - t:.0f} s", flush=True)
    results["seconds"] = round(time.time() - t0, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"results-{args.steps}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, OUT / f"language_mixing-{args.steps}.png", args.steps)
    print(table(results))


if __name__ == "__main__":
    main()
