"""rStar-Math self-evolution (`r1lab rstar`): the policy and a process preference model improve
each other over rounds.

    round 0: SFT the policy on step-format teacher traces (warm start), evaluate it.
    round r: MCTS on the training problems with policy_r (and PPM_{r-1} scoring new nodes, from round
             2 on); keep each problem's best correct trajectories (highest mean Q) and SFT the policy
             on them (with those of the rounds before, `rstar.sft_accumulate`); train PPM_r, started from the new policy, on sibling step pairs (Q > 0 that
             reached the answer vs Q < 0 that never did); evaluate the policy on the held-out set and
             PPM_r on the step pairs of problems it never trained on.

The rounds are stages of a plan (r1lab.runner; resume=RUN_DIR goes on after the finished rounds).
Each round writes a line to metrics.jsonl, checkpoints/policy-round<r> and checkpoints/ppm-round<r>;
the run ends with plots/rstar.png and report.md.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from r1lab.config import RunConfig
from r1lab.errors import ConfigError, DataError
from r1lab.eval.stage import run_eval
from r1lab.models import save_model
from r1lab.plots import save_figure
from r1lab.records import Problem, read_jsonl, write_jsonl, write_text_atomic
from r1lab.rollout import build_engine
from r1lab.runner import Context, Plan, Stage, name_run, resumed_config, run_dir_of, run_plan, settings_of
from r1lab.runs import MetricsWriter, RunDir, truncate_metrics
from r1lab.stages import load_policy, prepare_data
from r1lab.tasks.steps import StepRunner, step_trace
from r1lab.train.mcts import MCTS, SearchSettings, Tree, best_trajectories, preference_pairs, tree_stats
from r1lab.train.ppm import ProcessPreferenceModel, pairwise_accuracy, train_ppm
from r1lab.verify import verify_batch


def check_rstar_config(cfg: RunConfig) -> None:
    """Reject what rStar cannot run before anything is written (each setting's domain was checked
    when it was read)."""
    bad = [f for f in cfg.data.tasks if f not in ("arithmetic", "countdown")] if not cfg.data.train_path else []
    if bad:
        raise ConfigError(f"rstar: data.tasks {bad} have no step-format teacher (arithmetic and countdown have one)")


def step_sft_pairs(problems: list[Problem], cfg: RunConfig) -> list[tuple[Problem, str]]:
    """Verified step-format teacher traces of `problems` (those the teacher cannot write are skipped)."""
    pairs = []
    for p in problems:
        try:
            pairs.append((p, step_trace(p)))
        except ValueError:
            continue
    verdicts = verify_batch([p for p, _ in pairs], [t for _, t in pairs], timeout=cfg.reward.verify_timeout,
                            workers=cfg.reward.verify_workers)
    return [pair for pair, v in zip(pairs, verdicts) if v.correct]


def _sft(cfg: RunConfig, model, tok, pairs: list[tuple[Problem, str]], epochs: int, lr: float, seed: int,
         show_progress: bool) -> dict[str, float]:
    from r1lab.train.sft import sft_examples, train_sft

    sft_cfg = replace(cfg.sft, epochs=epochs, lr=lr or cfg.sft.lr,
                      warmup_steps=min(cfg.sft.warmup_steps, max(1, len(pairs) // cfg.sft.batch_size)))
    return train_sft(model, tok, sft_examples(tok, pairs), sft_cfg, seed=seed, show_progress=show_progress)


def sandboxed_accuracy(cfg: RunConfig, model, tok, problems: list[Problem], runner: StepRunner, seed: int) -> float:
    """Mean correctness of `eval.n` independent step-by-step samples per problem with the sandbox
    writing the result lines (a search of one rollout and one candidate per step, no PPM)."""
    r = cfg.rstar
    engine = build_engine(model, tok, cfg.rollout)
    settings = SearchSettings(rollouts=1, candidates=1, max_depth=r.max_depth, temperature=cfg.eval.temperature,
                              step_max_new_tokens=r.step_max_new_tokens,
                              max_positions=int(getattr(model.config, "max_position_embeddings", 0) or 0),
                              verify_timeout=cfg.reward.verify_timeout, verify_workers=cfg.reward.verify_workers,
                              seed=seed)
    trees = [Tree(p) for p in problems for _ in range(cfg.eval.n)]
    try:
        MCTS(engine, tok, runner, settings).search(trees)
    finally:
        engine.close()
    return sum(t.nodes[0].reached_correct for t in trees) / max(1, len(trees))


def _eval(cfg: RunConfig, model, tok, problems: list[Problem], run: RunDir, tag: str, show_progress: bool) -> dict:
    res = run_eval(cfg, model, tok, problems, run.file(f"eval/{tag}.jsonl"), f"eval {tag}", show_progress)
    n = cfg.eval.n
    return {"eval/avg": res.summary[f"avg@{n}"], f"eval/pass@{n}": res.summary.get(f"pass@{n}", float("nan"))}


class _Rounds:
    """rStar's rounds over one run directory. The policy, the PPM and the SFT trajectories collected
    so far carry from round to round: in memory, or read back from what a round finished in an
    earlier run left (checkpoints/policy-round<r>, ppm-round<r>, data/sft-round<r>.jsonl)."""

    def __init__(self, cfg: RunConfig, show_progress: bool, log):
        r = cfg.rstar
        self.cfg, self.show_progress, self.log = cfg, show_progress, log
        self.path = run_dir_of(cfg)
        self.run: RunDir  # made when the run starts
        self.runner = StepRunner(timeout=r.code_timeout, memory_mb=r.code_memory_mb, workers=r.sandbox_workers)
        self.data = None
        self.model = self.tok = None
        self.ppm: ProcessPreferenceModel | None = None
        self.collected: dict[tuple[str, str], tuple[Problem, str]] = {}  # every round's SFT trajectories, in order

    def start(self) -> None:
        self.run = RunDir(self.path) if self.cfg.resume else RunDir.create(self.cfg)
        if not self.cfg.resume:
            self.log(f"r1lab rstar -> {self.path}")

    def _state_before(self, rnd: int) -> None:
        """The data, and the policy, PPM and trajectories round `rnd` starts from."""
        cfg = self.cfg
        if self.data is None:
            data = prepare_data(cfg, self.run, log=self.log)
            warm = step_sft_pairs([p for p, _ in data.sft], cfg)
            if cfg.rstar.warm_start and not warm:
                raise DataError("rstar: no verified step-format teacher trace to warm-start the policy on")
            self.data = replace(data, sft=warm)  # the tiny tokenizer learns the step format's text
        if self.model is not None:
            return
        if rnd == 0:
            self.model, self.tok = load_policy(cfg, self.data)
            return
        self.model, self.tok = load_policy(cfg, path=str(self.run.checkpoint(f"policy-round{rnd - 1}")))
        problems = {p.id: p for p in self.data.train}
        for k in range(1, rnd):
            for _, row in read_jsonl(self.run.file(f"data/sft-round{k}.jsonl")):
                self.collected.setdefault((row["id"], row["response"]), (problems[row["id"]], row["response"]))
            if self.run.checkpoint(f"ppm-round{k}").is_dir():
                self.ppm = ProcessPreferenceModel.load(self.run.checkpoint(f"ppm-round{k}"))

    def _write(self, rnd: int, row: dict[str, Any]) -> None:
        """The round's line of metrics.jsonl (a round run again drops what it wrote before)."""
        path = self.run.file("metrics.jsonl")
        truncate_metrics(path, rnd - 1)
        with MetricsWriter(path, append=rnd > 0) as mw:
            mw.write(rnd, row)

    def round0(self, ctx: Context) -> dict[str, Any]:
        """Round 0: the warm-start SFT on the teacher's step-format traces, and its evaluation."""
        cfg, r, log, show_progress = self.cfg, self.cfg.rstar, self.log, self.show_progress
        self._state_before(0)
        model, tok, warm = self.model, self.tok, self.data.sft
        row: dict[str, Any] = {"round": 0}
        if r.warm_start:
            t = time.time()
            s = _sft(cfg, model, tok, warm, cfg.sft.epochs, cfg.sft.lr, cfg.seed, show_progress)
            row.update({"sft/examples": len(warm), "sft/loss": s.get("sft/loss"), "sft/seconds": time.time() - t})
            log(f"rstar round 0: warm-start SFT on {len(warm)} step-format teacher traces")
        row.update(_eval(cfg, model, tok, self.data.eval, self.run, "round0", show_progress))
        row["eval/sandbox_avg"] = sandboxed_accuracy(cfg, model, tok, self.data.eval, self.runner, cfg.seed + 777)
        log(f"rstar round 0: held-out accuracy {100 * row['eval/avg']:.1f}% "
            f"({100 * row['eval/sandbox_avg']:.1f}% with the sandbox's results)")
        self._write(0, row)
        save_model(model, tok, self.run.checkpoint("policy-round0"))
        return row

    def round(self, rnd: int):
        def stage(ctx: Context) -> dict[str, Any]:
            self._state_before(rnd)
            return self._round(rnd)
        return stage

    def _round(self, rnd: int) -> dict[str, Any]:
        """Round `rnd`: MCTS with the policy (and the PPM from round 2), SFT on the best trajectories, a
        new PPM on the step pairs, evaluations."""
        cfg, r, log, show_progress, run, runner = self.cfg, self.cfg.rstar, self.log, self.show_progress, self.run, self.runner
        model, tok, held = self.model, self.tok, self.data.eval
        max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        row: dict[str, Any] = {"round": rnd}
        pool = list(self.data.train)
        if r.problems_per_round and r.problems_per_round < len(pool):
            pool = random.Random(cfg.seed * 1000 + rnd).sample(pool, r.problems_per_round)
        n_held = int(round(r.ppm_heldout * len(pool)))
        trees = [Tree(p) for p in pool]
        guide = self.ppm if (r.ppm_guided and rnd >= 2) else None
        settings = SearchSettings(rollouts=r.rollouts, candidates=r.candidates, max_depth=r.max_depth, c=r.uct_c,
                                  prior_weight=r.prior_weight, temperature=r.temperature,
                                  step_max_new_tokens=r.step_max_new_tokens, max_positions=max_positions,
                                  verify_timeout=cfg.reward.verify_timeout, verify_workers=cfg.reward.verify_workers,
                                  seed=cfg.seed * 1000 + rnd)
        # each round starts with an empty sandbox cache, so its figures (sandbox runs, time) do not
        # depend on the rounds run before it in this process: a resumed run logs what an uninterrupted one does
        runner.forget()
        engine = build_engine(model, tok, cfg.rollout)
        mcts = MCTS(engine, tok, runner, settings, ppm=guide)
        t = time.time()
        runs_before = runner.runs
        with tqdm(total=r.rollouts, desc=f"mcts round {rnd}", unit="rollout", disable=not show_progress,
                  dynamic_ncols=True) as bar:
            try:
                mcts.search(trees, on_rollout=bar.update)
            finally:
                engine.close()
        row.update(tree_stats(trees))
        row.update({f"search/{k}": v for k, v in mcts.stats.to_dict().items()})
        row.update({"search/seconds": time.time() - t, "search/sandbox_runs": runner.runs - runs_before,
                    "search/ppm_guided": guide is not None})
        w = r.prior_weight if guide is not None else 0.0
        train_trees, held_trees = trees[: len(trees) - n_held], trees[len(trees) - n_held:]
        sft_pairs = [(tr.problem, text) for tr in train_trees for text, _ in best_trajectories(tr, r.sft_per_problem, w)]
        pairs = [p for tr in train_trees for p in preference_pairs(tr, r.pairs_per_side, w)]
        held_pairs = [p for tr in held_trees for p in preference_pairs(tr, r.pairs_per_side, w)]
        write_jsonl(run.file(f"data/sft-round{rnd}.jsonl"), [{"id": p.id, "prompt": p.prompt, "response": x}
                                                             for p, x in sft_pairs])
        write_jsonl(run.file(f"data/pairs-round{rnd}.jsonl"), pairs + held_pairs)
        row.update({"sft/examples": len(sft_pairs), "ppm/pairs_train": len(pairs), "ppm/pairs_heldout": len(held_pairs)})
        log(f"rstar round {rnd}: {len(trees)} trees, {row['search/nodes']} nodes, terminal correct rate "
            f"{100 * row['search/terminal_correct_rate']:.1f}%, solved {100 * row['search/solved_rate']:.1f}%, "
            f"{len(sft_pairs)} SFT trajectories, {len(pairs)}+{len(held_pairs)} step pairs")
        if guide is not None and held_pairs:  # the guiding PPM on the new policy's trees
            row["ppm/prev_heldout_accuracy"] = pairwise_accuracy(guide, held_pairs)

        for p, text in sft_pairs:
            self.collected.setdefault((p.id, text), (p, text))
        train_on = list(self.collected.values()) if r.sft_accumulate else sft_pairs
        if train_on:
            t = time.time()
            s = _sft(cfg, model, tok, train_on, r.sft_epochs, r.sft_lr, cfg.seed + rnd, show_progress)
            row.update({"sft/trained_on": len(train_on), "sft/loss": s.get("sft/loss"),
                        "sft/seconds": time.time() - t})
        if pairs:
            self.ppm = ProcessPreferenceModel.from_policy(model, tok)
            row.update(train_ppm(self.ppm, pairs, r.ppm_lr, r.ppm_epochs, r.ppm_batch_size, cfg.sft.grad_clip,
                                 seed=cfg.seed + rnd, show_progress=show_progress))
            row["ppm/heldout_accuracy"] = pairwise_accuracy(self.ppm, held_pairs)
            self.ppm.save(run.checkpoint(f"ppm-round{rnd}"))
        row.update(_eval(cfg, model, tok, held, run, f"round{rnd}", show_progress))
        row["eval/sandbox_avg"] = sandboxed_accuracy(cfg, model, tok, held, runner, cfg.seed + 777)
        save_model(model, tok, run.checkpoint(f"policy-round{rnd}"))
        log(f"rstar round {rnd}: held-out accuracy {100 * row['eval/avg']:.1f}% "
            f"({100 * row['eval/sandbox_avg']:.1f}% with the sandbox's results), PPM held-out pair accuracy "
            f"{_pct(row.get('ppm/heldout_accuracy'))}")
        self._write(rnd, row)
        return row

    def report(self, ctx: Context) -> list[dict[str, Any]]:
        history = [ctx.results[f"round-{r}"] for r in range(self.cfg.rstar.rounds + 1)]
        write_text_atomic(self.run.file("rounds.json"), json.dumps(history, indent=1, default=float) + "\n")
        plot_rounds(history, self.run.file("plots/rstar.png"), f"rStar-Math self-evolution: {self.path.name}")
        _report(self.cfg, self.run, history)
        return history


def rstar_plan(cfg: RunConfig, show_progress: bool = True, log=print) -> Plan:
    """rStar's rounds (round-0 .. round-R) and the report, in out_dir/name or in the run cfg.resume
    names. Every random draw of a round is seeded from (seed, round) and a round starts from the
    previous round's checkpoints, so a run resumed after round r logs and saves what the
    uninterrupted run does, bit for bit (tests/test_rstar.py)."""
    check_rstar_config(cfg)
    cfg = resumed_config(cfg, ("resume", "tracking")) if cfg.resume else name_run(cfg, "rstar")
    rounds = _Rounds(cfg, show_progress, log)
    settings = settings_of(cfg, ("name", "out_dir", "resume", "tracking"))
    stages = [Stage(f"round-{r}", rounds.round0 if r == 0 else rounds.round(r), settings)
              for r in range(cfg.rstar.rounds + 1)]
    stages.append(Stage("report", rounds.report, settings))
    return Plan("rstar", rounds.path, stages, resume=bool(cfg.resume), start=rounds.start)


def run_rstar(cfg: RunConfig, show_progress: bool = True, log=print) -> list[dict[str, Any]]:
    """Run (or resume) the rounds; returns one row per round (also metrics.jsonl and rounds.json)."""
    plan = rstar_plan(cfg, show_progress, log)
    ctx = run_plan(plan, log)
    if ctx.status["report"] == "done":
        return json.loads((plan.run_dir / "rounds.json").read_text(encoding="utf-8"))
    return ctx.results["report"]


def _pct(v: Any) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


ROUND_COLUMNS = (
    ("policy held-out acc", "eval/avg", True), ("same, sandbox results", "eval/sandbox_avg", True),
    ("nodes/tree", "search/nodes_per_tree", False),
    ("terminal correct", "search/terminal_correct_rate", True), ("solved", "search/solved_rate", True),
    ("SFT examples", "sft/examples", False), ("pairs (train+held)", None, False),
    ("PPM held-out pair acc", "ppm/heldout_accuracy", True), ("search s", "search/seconds", False),
)


def rounds_table(history: list[dict[str, Any]]) -> str:
    lines = ["| round | " + " | ".join(c for c, _, _ in ROUND_COLUMNS) + " |", "|---|" + "---:|" * len(ROUND_COLUMNS)]
    for h in history:
        cells = []
        for _, key, pct in ROUND_COLUMNS:
            if key is None:
                cells.append(f"{h['ppm/pairs_train']}+{h['ppm/pairs_heldout']}" if "ppm/pairs_train" in h else "-")
                continue
            v = h.get(key)
            if v is None or (isinstance(v, float) and v != v):
                cells.append("-")
            elif pct:
                cells.append(f"{100 * v:.1f}%")
            else:
                cells.append(f"{v:.1f}" if isinstance(v, float) else str(v))
        lines.append(f"| {h['round']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rounds(history: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Four panels against the round: policy accuracy, search outcomes, PPM accuracy, tree and data sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "policy held-out accuracy": ["eval/avg", "eval/sandbox_avg"],
        "search (training problems)": ["search/terminal_correct_rate", "search/solved_rate"],
        "PPM pairwise accuracy (held-out pairs)": ["ppm/heldout_accuracy", "ppm/prev_heldout_accuracy"],
        "tree size and data (per round)": ["search/nodes_per_tree", "sft/examples", "sft/trained_on", "ppm/pairs_train"],
    }
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (name, keys) in zip(axes.flat, panels.items()):
        for key in keys:
            # round 0's SFT examples are the warm start's teacher traces, off the scale of the rounds' data
            pts = [(h["round"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and h[key] == h[key]
                   and not (key == "sft/examples" and h["round"] == 0)]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("round")
        ax.set_xticks([h["round"] for h in history])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _report(cfg: RunConfig, run: RunDir, history: list[dict[str, Any]]) -> None:
    from r1lab.report import write_report

    r = cfg.rstar
    settings = (f"{r.rounds} rounds; per round {r.problems_per_round or 'all'} training problems, {r.rollouts} rollouts "
                f"per problem, {r.candidates} candidate steps per expansion, depth <= {r.max_depth}, UCT c = {r.uct_c}, "
                f"PPM-guided from round 2: {r.ppm_guided} (prior weight {r.prior_weight}); SFT on the best "
                f"{r.sft_per_problem} correct trajectories per problem ({'accumulated over rounds' if r.sft_accumulate else 'this round only'}, "
                f"{r.sft_epochs} epochs at lr {r.sft_lr or cfg.sft.lr:g}); PPM pairs {r.pairs_per_side} x {r.pairs_per_side} "
                f"per node; {int(round(100 * r.ppm_heldout))}% of each round's problems held out for the PPM's accuracy. "
                f"Policy accuracy: avg@{cfg.eval.n} on {cfg.data.eval_size} held-out problems, sampled without search "
                "or sandbox (the policy writes its own result lines; only the answer is verified); 'sandbox results': "
                f"the same number of single step-by-step samples per problem with the sandbox writing the result lines.")
    write_report(run.file("report.md"), f"r1lab rstar: {run.path.name}",
                 [("Settings", settings), ("Rounds", rounds_table(history)), ("Plot", "![rstar](plots/rstar.png)")])
