"""`r1lab demo`: the whole pipeline on a tiny model, in minutes on a laptop CPU.

data (generate, decontaminate, verify teacher traces) -> tiny model built offline -> eval ->
SFT on verified traces -> eval -> GRPO -> eval -> report.md, plots and a table of what each stage gained.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from r1lab.config import RunConfig, to_dict
from r1lab.models import count_parameters, save_model
from r1lab.plots import plot_stages
from r1lab.report import stage_table, write_report
from r1lab.runs import RunDir
from r1lab.stages import health_section, load_policy, prepare_data, run_eval, run_rl, run_sft


def run_demo(cfg: RunConfig, show_progress: bool = True, log=print) -> dict[str, Any]:
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run = RunDir.create(cfg)
    log(f"r1lab demo -> {run.path}")

    data = prepare_data(cfg, run, log=log)
    model, tok = load_policy(cfg, data)
    save_model(model, tok, run.checkpoint("base"))
    log(f"model: {type(model).__name__}, {count_parameters(model) / 1e6:.2f}M parameters, vocabulary {len(tok)}")

    stages: dict[str, dict[str, float]] = {}
    times: dict[str, float] = {}

    def evaluate(stage: str) -> None:
        res = run_eval(cfg, model, tok, data.eval, run.file(f"eval/{stage}.jsonl"), f"eval {stage}", show_progress)
        stages[stage] = res.summary
        log(f"  {stage}: avg@{cfg.eval.n} {100 * res.summary[f'avg@{cfg.eval.n}']:.1f}%  "
            f"maj@{cfg.eval.n} {100 * res.summary[f'maj@{cfg.eval.n}']:.1f}%")

    evaluate("untrained")
    t = time.time()
    sft_summary = run_sft(cfg, run, model, tok, data, show_progress)
    times["sft"] = time.time() - t
    evaluate("sft")
    t = time.time()
    history = run_rl(cfg, run, model, tok, data, show_progress)
    times["rl"] = time.time() - t
    evaluate("rl")

    n = cfg.eval.n
    table = stage_table(stages, n, cfg.eval.ks)
    plot_stages(stages, [f"avg@{n}", f"pass@{max(cfg.eval.ks)}", f"maj@{n}"], run.file("plots/stages.png"),
                "held-out accuracy by stage")
    gain_sft = stages["sft"][f"avg@{n}"] - stages["untrained"][f"avg@{n}"]
    gain_rl = stages["rl"][f"avg@{n}"] - stages["sft"][f"avg@{n}"]
    total = time.time() - t_start
    gen_tps = [h["throughput/gen_tokens_per_s"] for h in history]
    train_tps = [h["throughput/train_tokens_per_s"] for h in history]
    summary = {
        "stages": stages,
        "gain_sft": gain_sft,
        "gain_rl": gain_rl,
        "seconds": {"total": total, **times},
        "data": data.report,
        "sft": sft_summary,
        "rl_final": history[-1] if history else {},
        "throughput": {
            "rollout_tokens_per_s": sum(gen_tps) / max(1, len(gen_tps)),
            "train_tokens_per_s": sum(train_tps) / max(1, len(train_tps)),
        },
    }
    (run.path / "summary.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
    write_report(
        run.file("report.md"),
        f"r1lab demo: {run.path.name}",
        [
            ("What each stage gained (held-out problems)",
             f"{len(data.eval)} held-out problems of {', '.join(cfg.data.tasks)} (difficulty {cfg.data.difficulty}), "
             f"{n} samples each at temperature {cfg.eval.temperature}. Accuracies in %, lengths in tokens.\n\n"
             f"{table}\n\nSFT gained {100 * gain_sft:+.1f} points avg@{n}; RL ({cfg.algo.advantage}) "
             f"gained {100 * gain_rl:+.1f} points over SFT.\n\n![stages](plots/stages.png)"),
            ("Training curves", "![sft](plots/sft.png)\n\n![rl](plots/rl.png)"),
            health_section(cfg, run),
            ("Data", "\n".join(f"- {k}: {v}" for k, v in data.report.items())),
            ("Time and throughput",
             f"- total {total:.0f} s (SFT {times['sft']:.0f} s, RL {times['rl']:.0f} s)\n"
             f"- rollout {summary['throughput']['rollout_tokens_per_s']:.0f} generated tokens/s, "
             f"training {summary['throughput']['train_tokens_per_s']:.0f} tokens/s (mean over RL steps)"),
            ("Files", "config.yaml (resolved config), metrics.jsonl (RL, one line per step), health.jsonl (run-health findings), sft_metrics.jsonl, "
             "samples.jsonl, eval/*.jsonl (per problem, every sample), checkpoints/{base,sft,rl} (HF format), plots/*.png"),
            ("Config", "```yaml\n" + __import__("yaml").safe_dump(to_dict(cfg), sort_keys=False) + "```"),
        ],
    )
    log("")
    log(table)
    log(f"\nSFT {100 * gain_sft:+.1f} points, RL {100 * gain_rl:+.1f} points (avg@{n}); "
        f"{total:.0f} s in all. Report: {run.file('report.md')}")
    return summary
