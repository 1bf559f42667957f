"""The stages a user runs — data, model, SFT, RL, eval — as functions of a config and a run
directory. The CLI and the demo are thin layers over these."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.config import RunConfig
from r1lab.errors import ConfigError, DataError
from r1lab.eval.run import EvalResult, evaluate
from r1lab.models import build_tiny_model, build_tiny_tokenizer, load_model, render_prompt, resolve_device, save_model, torch_dtype
from r1lab.plots import RL_PANELS, SFT_PANELS, plot_curves
from r1lab.records import Problem, load_problems, save_problems
from r1lab.rollout import SamplingParams, engine_options, make_engine
from r1lab.runs import MetricsWriter, RunDir, read_metrics
from r1lab.tasks import generate_splits, get_task
from r1lab.verify import check_gold, verify_batch


@dataclass
class Data:
    train: list[Problem]  # RL prompts
    eval: list[Problem]  # held out
    sft: list[tuple[Problem, str]]  # (problem, verified reasoning trace)
    report: dict[str, Any]
    curriculum: dict[int, list[Problem]] | None = None  # difficulty -> RL prompts (train.curriculum)

    @property
    def rl_prompts(self) -> list[Problem] | dict[int, list[Problem]]:
        return self.curriculum or self.train


def prepare_data(cfg: RunConfig, run: RunDir | None = None, log=print) -> Data:
    """Generate (or load) train and held-out problems, write teacher traces, and curate: drop
    training problems that also appear in the held-out set, traces that do not verify, and
    problems whose gold answer does not score against itself."""
    d = cfg.data
    t0 = time.time()
    if d.train_path or d.eval_path:
        if not (d.train_path and d.eval_path):
            raise DataError("data.train_path and data.eval_path must be given together")
        train, held = load_problems(d.train_path), load_problems(d.eval_path)
    else:
        train, held = generate_splits(d.tasks, d.train_size, d.eval_size, d.difficulty, d.seed)
    report: dict[str, Any] = {"generated_train": len(train), "generated_eval": len(held)}

    # decontaminate: no training prompt may equal a held-out prompt (after whitespace normalisation)
    norm = lambda p: " ".join(str(p.prompt).split()).lower()  # noqa: E731
    held_keys = {norm(p) for p in held}
    before = len(train)
    train = [p for p in train if norm(p) not in held_keys]
    report["dropped_contaminated"] = before - len(train)

    # pre-flight: each math gold answer must score correct against itself (PITFALLS #2). Other
    # families (countdown: the answer is a target, the response an expression) are checked through
    # their verified teacher traces below.
    bad = check_gold([p for p in train + held if p.task == "math"])
    if bad:
        p, v = bad[0]
        raise DataError(f"{len(bad)} problem(s) have a gold answer that does not verify against itself, "
                        f"e.g. id {p.id!r} answer {p.answer!r}: {v.reason}")

    # SFT traces: from the data ("response" field) or from the task's teacher; verified either way
    pool = train[: d.sft_size]
    pairs: list[tuple[Problem, str]] = []
    for p in pool:
        if "response" in p.metadata:
            pairs.append((p, str(p.metadata["response"])))
        elif p.metadata.get("family"):
            pairs.append((p, get_task(p.metadata["family"]).teacher_trace(p)))
    verdicts = verify_batch([p for p, _ in pairs], [r for _, r in pairs],
                            timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers)
    sft = [pair for pair, v in zip(pairs, verdicts) if v.correct]
    report["sft_traces"] = len(pairs)
    report["sft_traces_dropped_unverified"] = len(pairs) - len(sft)
    # RL prompts are the training problems not used for SFT when there are enough of them
    rl_pool = train[d.sft_size:] if len(train) - d.sft_size >= max(64, d.train_size // 4) else train
    curriculum = None
    if cfg.train.curriculum and not d.train_path:
        # one pool of RL prompts per scheduled difficulty, decontaminated against the held-out set
        curriculum = {}
        for level in sorted(set(cfg.train.curriculum.values())):
            size = max(64, d.train_size - d.sft_size)
            while True:  # the easy levels of a family may hold fewer distinct problems than asked
                try:
                    pool, _ = generate_splits(d.tasks, size, 1, level, d.seed + 7919 * level)
                    break
                except ConfigError:
                    if size <= 16:
                        raise
                    size //= 2
            curriculum[level] = [p for p in pool if norm(p) not in held_keys]
        report["curriculum"] = {level: len(pool) for level, pool in curriculum.items()}
    report.update({"rl_prompts": len(rl_pool), "eval": len(held), "seconds": round(time.time() - t0, 2)})
    if run is not None:
        save_problems(run.file("data/train.jsonl"), rl_pool)
        save_problems(run.file("data/eval.jsonl"), held)
        save_problems(run.file("data/sft.jsonl"), [Problem(**{**p.to_dict(), "metadata": {**p.metadata, "response": r}}) for p, r in sft])
    log(f"data: {len(rl_pool)} RL prompts, {len(sft)} verified SFT traces, {len(held)} held-out problems "
        f"({report['dropped_contaminated']} contaminated and {report['sft_traces_dropped_unverified']} unverified dropped)")
    return Data(rl_pool, held, sft, report, curriculum)


def tokenizer_corpus(data: Data) -> list[str]:
    """Text the tiny tokenizer is trained on: chat-formatted prompts and the traces."""
    texts = [f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n" for p in data.train + [q for q, _ in data.sft]]
    texts += [r for _, r in data.sft]
    return texts


def load_policy(cfg: RunConfig, data: Data | None = None, path: str | None = None):
    """The model a stage starts from: `path` / cfg.init_from if given, else model.path; "tiny"
    builds a fresh tiny model (its tokenizer trained on the data's text)."""
    source = path or cfg.init_from or cfg.model.path
    if source == "tiny":
        if data is None:
            raise DataError("building the tiny model needs data to train its tokenizer on")
        tok = build_tiny_tokenizer(tokenizer_corpus(data))
        model = build_tiny_model(tok, cfg.model.tiny, seed=cfg.seed).to(torch_dtype(cfg.model.dtype))
    else:
        model, tok = load_model(source, cfg.model.dtype)
    return model.to(resolve_device(cfg.model.device)), tok


def eval_params(cfg: RunConfig) -> SamplingParams:
    e = cfg.eval
    return SamplingParams(temperature=e.temperature, top_p=e.top_p,
                          max_new_tokens=e.max_new_tokens or cfg.sampling.max_new_tokens)


def run_eval(cfg: RunConfig, model, tokenizer, problems: list[Problem], out_path: Path | None, desc: str,
             show_progress: bool = True, engine=None, resume: bool = False, settings: dict[str, Any] | None = None,
             on_progress=None) -> EvalResult:
    """Evaluate with the config's eval settings. `engine` (e.g. an OpenAIEngine for a served model)
    replaces the local HF engine of `model`; `resume`/`settings`/`on_progress` as in eval.run.evaluate."""
    own = engine is None
    if own:
        engine = make_engine(model, tokenizer, cfg.rollout.engine, batch_size=cfg.eval.batch_size,
                             **engine_options(cfg.rollout))
    try:
        return evaluate(engine, problems, eval_params(cfg), n=cfg.eval.n, ks=cfg.eval.ks, seed=cfg.seed + 777,
                        verify_timeout=cfg.reward.verify_timeout, verify_workers=cfg.reward.verify_workers,
                        out_path=out_path, desc=desc, show_progress=show_progress, resume=resume, settings=settings,
                        on_progress=on_progress)
    finally:
        if own and hasattr(engine, "close"):  # an engine with memory of its own (vLLM) frees it
            engine.close()


def run_sft(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data, show_progress: bool = True) -> dict[str, float]:
    from r1lab.train.sft import sft_examples, train_sft

    if not data.sft:
        raise DataError("no verified SFT traces: give problems with a 'response' field or generated task families")
    from r1lab.train.lora import apply_lora, merge_lora

    examples = sft_examples(tokenizer, data.sft)
    lora = apply_lora(model, cfg.sft.lora, "sft.lora")  # adapters in place; None = full fine-tuning
    with MetricsWriter(run.file("sft_metrics.jsonl")) as mw:
        summary = train_sft(model, tokenizer, examples, cfg.sft, metrics=mw, seed=cfg.seed, show_progress=show_progress)
    merge_lora(lora, model)  # saved merged: a plain HF directory
    save_model(model, tokenizer, run.checkpoint("sft"))
    plot_curves(read_metrics(run.file("sft_metrics.jsonl")), SFT_PANELS, run.file("plots/sft.png"), "SFT")
    return summary


def run_rl(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data, show_progress: bool = True) -> list[dict[str, Any]]:
    from r1lab.train.lora import apply_lora, merge_lora
    from r1lab.train.rl import train_rl

    lora = apply_lora(model, cfg.train.lora, "train.lora")  # adapters in place; None = full fine-tuning
    engine = make_engine(model, tokenizer, cfg.rollout.engine, batch_size=cfg.rollout.batch_size,
                         **engine_options(cfg.rollout))

    def on_eval(step: int) -> dict[str, float]:
        # an engine that holds its own weights (vLLM) also evaluates: it follows the policy, and a
        # second copy of it would not fit next to the trainer
        shared = engine if hasattr(engine, "load_weights") else None
        res = run_eval(cfg, model, tokenizer, data.eval, None, f"eval@{step}", show_progress=False, engine=shared)
        return {"eval/avg": res.summary[f"avg@{cfg.eval.n}"]}

    try:
        with MetricsWriter(run.file("metrics.jsonl")) as mw, MetricsWriter(run.file("samples.jsonl")) as sw:
            history = train_rl(cfg, model, tokenizer, engine, data.rl_prompts, metrics=mw, samples=sw,
                               on_eval=on_eval, show_progress=show_progress)
    finally:
        if hasattr(engine, "close"):
            engine.close()
    merge_lora(lora, model)
    save_model(model, tokenizer, run.checkpoint("rl"))
    plot_curves(read_metrics(run.file("metrics.jsonl")), RL_PANELS, run.file("plots/rl.png"), f"RL ({cfg.algo.advantage})")
    return history
