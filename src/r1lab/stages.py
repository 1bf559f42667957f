"""The stages a user runs — data, model, CPT, SFT, DPO, RL, eval — as functions of a config and a run
directory. The CLI and the demo are thin layers over these."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, replace
from typing import Any

from r1lab.config import RunConfig
from r1lab.errors import ConfigError, DataError, WorkerError
from r1lab.eval.stage import run_eval
from r1lab.health import HealthMonitor, health_markdown, read_findings
from r1lab.models import build_tiny_model, build_tiny_tokenizer, load_model, resolve_device, save_model, torch_dtype
from r1lab.vision import add_vision_tokens, attach_image_processor, build_tiny_vlm, tiny_image_processor
from r1lab.plots import RL_PANELS, SFT_PANELS, plot_curves
from r1lab.records import Problem, load_problems, prompt_messages, save_problems, write_text_atomic
from r1lab.rollout import build_engine
from r1lab.rollout.base import LiveModelEngine
from r1lab.runner import Plan, Stage, name_run, read_marker, resumed_config, run_dir_of, settings_of
from r1lab.runs import MetricsWriter, RunDir, read_metrics, truncate_metrics
from r1lab.tasks import generate_splits, get_task
from r1lab.tracking import make_tracker
from r1lab.verify import check_gold, verify_batch


def check_run_config(cfg: RunConfig, paths: bool = True) -> RunConfig:
    """The checks every command makes of a loaded config before it writes anything: every setting
    against its domain (again: a command may have changed some since it was read; with `paths`, the
    files and directories it names must exist), dtype and device, the method's pieces and their
    settings, trackers, the trainer group, rollout and reward workers, the rollout engine, the
    environment (built once from env.settings; its tools allowed by the task families). Returns
    the config with the defaults that follow from other settings (the off-policy correction of an
    asynchronous run), as the run then saves it."""
    from r1lab.cluster import check_cluster, with_off_policy_correction
    from r1lab.domains import check_fields
    from r1lab.rollout import check_engine
    from r1lab.tracking import check_tracking
    from r1lab.rollout.episodes import check_env
    from r1lab.train.methods import bind_method, check_method_settings

    check_fields(cfg, paths=paths)
    torch_dtype(cfg.model.dtype)
    resolve_device(cfg.model.device)
    bind_method(cfg.algo)
    check_method_settings(cfg)
    check_tracking(cfg.tracking)  # a missing package
    check_cluster(cfg)
    check_engine(cfg.rollout.engine)  # a missing vLLM extra
    check_env(cfg)
    return with_off_policy_correction(cfg)


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


def frame_problem(problem: Problem, system_prompt: str = "", response_prefix: str = "") -> Problem:
    """The problem with its prompt framed: a system message first (replacing one it has) and an
    assistant message the response continues from. Task parsers read the last user message, so
    they see the question unchanged."""
    messages = [m for m in prompt_messages(problem.prompt) if m.get("role") != "assistant"]
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m.get("role") != "system"]
    if response_prefix:
        messages.append({"role": "assistant", "content": response_prefix})
    return replace(problem, prompt=messages)


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
    def framed(problems: list[Problem]) -> list[Problem]:
        if not (d.system_prompt or d.response_prefix):
            return problems
        return [frame_problem(p, d.system_prompt, d.response_prefix) for p in problems]

    train, held = framed(train), framed(held)

    # decontaminate: no training prompt may equal a held-out prompt (after whitespace normalisation)
    # with the same images (r1lab writes the same pixels as the same PNG bytes)
    norm = lambda p: " ".join(str(p.prompt).split()).lower() + "|".join(p.images)  # noqa: E731
    held_keys = {norm(p) for p in held}
    before = len(train)
    train = [p for p in train if norm(p) not in held_keys]
    report["dropped_contaminated"] = before - len(train)

    # pre-flight: each math gold answer must score correct against itself (docs/pitfalls.md,
    # "Verifier bugs"). Other families (countdown: the answer is a target, the response an
    # expression) are checked through their verified teacher traces below.
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
    unverified = sum(not v.correct for v in verdicts)
    sft = pairs if d.keep_unverified_sft else [pair for pair, v in zip(pairs, verdicts) if v.correct]
    report["sft_traces"] = len(pairs)
    report["sft_traces_dropped_unverified"] = len(pairs) - len(sft)
    report["sft_traces_kept_unverified"] = unverified if d.keep_unverified_sft else 0
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
            curriculum[level] = [p for p in framed(pool) if norm(p) not in held_keys]
        report["curriculum"] = {level: len(pool) for level, pool in curriculum.items()}
    report.update({"rl_prompts": len(rl_pool), "eval": len(held), "seconds": round(time.time() - t0, 2)})
    if run is not None:
        save_problems(run.file("data/train.jsonl"), rl_pool)
        save_problems(run.file("data/eval.jsonl"), held)
        save_problems(run.file("data/sft.jsonl"), [Problem(**{**p.to_dict(), "metadata": {**p.metadata, "response": r}}) for p, r in sft])
    log(f"data: {len(rl_pool)} RL prompts, {len(sft)} {'' if d.keep_unverified_sft else 'verified '}SFT traces, "
        f"{len(held)} held-out problems "
        f"({report['dropped_contaminated']} contaminated and {report['sft_traces_dropped_unverified']} unverified dropped"
        + (f"; {unverified} unverified SFT traces KEPT: data.keep_unverified_sft" if d.keep_unverified_sft else "") + ")")
    return Data(rl_pool, held, sft, report, curriculum)


def tokenizer_corpus(data: Data) -> list[str]:
    """Text the tiny tokenizer is trained on: chat-formatted prompts and the traces."""
    texts = [f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n" for p in data.train + [q for q, _ in data.sft]]
    texts += [r for _, r in data.sft]
    return texts


def load_policy(cfg: RunConfig, data: Data | None = None, path: str | None = None):
    """The model a stage starts from: `path` / cfg.init_from if given, else model.path; "tiny"
    builds a fresh tiny model (its tokenizer trained on the data's text): a tiny Qwen2-VL when the
    data shows images."""
    source = path or cfg.init_from or cfg.model.path
    if source == "tiny":
        if data is None:
            raise DataError("building the tiny model needs data to train its tokenizer on")
        tok = build_tiny_tokenizer(tokenizer_corpus(data), cfg.model.tiny.vocab_size)
        if any(p.images for p in data.train + data.eval + [q for q, _ in data.sft]):  # a tiny Qwen2-VL
            t = cfg.model.tiny
            add_vision_tokens(tok)
            attach_image_processor(tok, tiny_image_processor(t.image_size, t.patch_size))
            model = build_tiny_vlm(tok, t, seed=cfg.seed).to(torch_dtype(cfg.model.dtype))
        else:
            model = build_tiny_model(tok, cfg.model.tiny, seed=cfg.seed).to(torch_dtype(cfg.model.dtype))
    else:
        model, tok = load_model(source, cfg.model.dtype)
    return model.to(resolve_device(cfg.model.device)), tok


def run_sft(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data, show_progress: bool = True,
            resume: bool | None = None) -> dict[str, float]:
    """SFT on the data's verified traces, with resumable checkpoints (sft.save_every). `resume`
    (default: whether cfg.resume is set) continues from the run's last SFT checkpoint. Under an
    environment (env.name) each trace is that environment's episode, its observations masked."""
    from r1lab.rollout.episodes import limits_of
    from r1lab.train.sft import sft_examples, train_sft

    if not data.sft:
        raise DataError("no verified SFT traces: give problems with a 'response' field or generated task families")
    from r1lab.train.checkpoint import SFT_STATE_DIR, load_latest
    from r1lab.train.lora import apply_lora, merge_lora

    resume = bool(cfg.resume) if resume is None else resume
    examples = sft_examples(tokenizer, data.sft, cfg.env.name, cfg.env.settings, limits_of(cfg))
    lora = apply_lora(model, cfg.sft.lora, "sft.lora")  # adapters in place; None = full fine-tuning
    state = None
    if resume:  # continue from the last checkpoint; what was logged after it is dropped
        state = load_latest(run.path, SFT_STATE_DIR)
        truncate_metrics(run.file("sft_metrics.jsonl"), state["step"])
    with MetricsWriter(run.file("sft_metrics.jsonl"), append=resume, tracker=make_tracker(cfg, run.path, "sft")) as mw:
        summary = train_sft(model, tokenizer, examples, cfg.sft, metrics=mw, seed=cfg.seed, show_progress=show_progress,
                            run_path=run.path, resume=state)
    merge_lora(lora, model)  # saved merged: a plain HF directory
    save_model(model, tokenizer, run.checkpoint("sft"))
    plot_curves(read_metrics(run.file("sft_metrics.jsonl")), SFT_PANELS, run.file("plots/sft.png"), "SFT")
    return summary


@dataclass
class PackedCorpus:
    train: Any  # train.cpt.Packed: the full rows trained on
    heldout: list  # train.cpt.Packed parts: the held-out rows (a shorter last one kept)
    report: dict[str, Any]


def check_corpus(cfg: RunConfig) -> None:
    """What can be checked of cfg.cpt's corpus before a tokenizer exists: it is given, readable, has
    text in its field, leaves a training document when the held-out ones are set aside, and is not
    certainly shorter than one row (a byte-level tokenizer gives at most one token per byte, plus
    EOS). prepare_corpus checks the exact token count."""
    from r1lab.data.corpus import read_corpus
    from r1lab.train.cpt import split_documents

    c = cfg.cpt
    docs = read_corpus(c.corpus, c.text_field).documents
    train, held = split_documents(docs, c.heldout)
    if c.heldout and not train:
        raise DataError(f"cpt.corpus={c.corpus}: {len(docs)} document(s), all held out by cpt.heldout={c.heldout:g}; "
                        "add documents or set cpt.heldout=0")
    most = sum(len(d.encode()) + 2 for d in train)
    if most < c.seq_len:
        raise DataError(f"cpt.corpus={c.corpus}: shorter than one sequence (at most {most} tokens of training text, "
                        f"cpt.seq_len={c.seq_len}); add text or lower cpt.seq_len")


def prepare_corpus(cfg: RunConfig, tokenizer, max_positions: int | None = None) -> PackedCorpus:
    """cfg.cpt's corpus read, split into training and held-out documents, tokenised (no special
    tokens, no chat template) and packed into rows of cpt.seq_len. A corpus whose training part
    does not fill one row, or a row longer than the model's positions, is a one-line error."""
    from r1lab.data.corpus import read_corpus
    from r1lab.train.cpt import pack_documents, split_documents

    c = cfg.cpt
    if max_positions is not None and c.seq_len > max_positions:
        raise ConfigError(f"cpt.seq_len={c.seq_len}: longer than the model's {max_positions} positions "
                          "(max_position_embeddings)")
    check_corpus(cfg)
    corpus = read_corpus(c.corpus, c.text_field)
    train_docs, held_docs = split_documents(corpus.documents, c.heldout)
    encode = lambda docs: tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []  # noqa: E731
    train_ids, held_ids = encode(train_docs), encode(held_docs)
    eos = tokenizer.eos_token_id
    reset = c.boundaries == "reset"
    tokens = sum(len(ids) + 1 for ids in train_ids)
    if tokens < c.seq_len:
        raise DataError(f"cpt.corpus={c.corpus}: shorter than one sequence ({tokens} tokens of training text with EOS, "
                        f"cpt.seq_len={c.seq_len}); add text or lower cpt.seq_len")
    (train,) = pack_documents(train_ids, eos, c.seq_len, reset)
    heldout = pack_documents(held_ids, eos, c.seq_len, reset, keep_tail=True) if held_ids else []
    report = {"files": len(corpus.files), "documents": len(corpus.documents), "blank_documents": corpus.blank,
              "train_documents": len(train_docs), "heldout_documents": len(held_docs), "train_tokens": tokens,
              "train_rows": len(train), "dropped_tail_tokens": train.dropped_tokens,
              "heldout_tokens": sum(len(ids) + 1 for ids in held_ids), "seq_len": c.seq_len, "boundaries": c.boundaries}
    return PackedCorpus(train, heldout, report)


def run_cpt(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data | None = None, show_progress: bool = True,
            resume: bool | None = None, corpus: PackedCorpus | None = None, log=print) -> dict[str, float]:
    """Continued pre-training on cfg.cpt's corpus, with resumable checkpoints (cpt.save_every).
    `resume` (default: whether cfg.resume is set) continues from the run's last CPT checkpoint."""
    from r1lab.plots import CPT_PANELS
    from r1lab.train.checkpoint import CPT_STATE_DIR, load_latest
    from r1lab.train.cpt import train_cpt

    corpus = corpus or prepare_corpus(cfg, tokenizer, getattr(model.config, "max_position_embeddings", None))
    r = corpus.report
    log(f"cpt: {r['train_documents']} documents, {r['train_tokens']} tokens -> {r['train_rows']} rows of {r['seq_len']} "
        f"({r['dropped_tail_tokens']} tail tokens left out); held out: {r['heldout_documents']} documents, "
        f"{r['heldout_tokens']} tokens; attention at document boundaries: {r['boundaries']}")
    write_text_atomic(run.file("cpt_corpus.json"), json.dumps(r, indent=1) + "\n")
    resume = bool(cfg.resume) if resume is None else resume
    state = None
    if resume:  # continue from the last checkpoint; what was logged after it is dropped
        state = load_latest(run.path, CPT_STATE_DIR)
        truncate_metrics(run.file("cpt_metrics.jsonl"), state["step"])
    with MetricsWriter(run.file("cpt_metrics.jsonl"), append=resume, tracker=make_tracker(cfg, run.path, "cpt")) as mw:
        summary = train_cpt(model, corpus.train, corpus.heldout, cfg.cpt, metrics=mw, seed=cfg.seed,
                            show_progress=show_progress, run_path=run.path, resume=state)
    save_model(model, tokenizer, run.checkpoint("cpt"))
    plot_curves(read_metrics(run.file("cpt_metrics.jsonl")), CPT_PANELS, run.file("plots/cpt.png"),
                f"CPT ({r['train_tokens']} tokens, seq_len {r['seq_len']})")
    return summary


def run_rl(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data, show_progress: bool = True,
           resume: bool | None = None) -> list[dict[str, Any]]:
    """The RL stage, with resumable checkpoints (train.save_every). `resume` (default: whether
    cfg.resume is set) continues from the run's last RL checkpoint; returns the steps run here."""
    from r1lab.train.lora import apply_lora, merge_lora
    from r1lab.rollout.episodes import is_episodic
    from r1lab.train.episodes import episode_eval
    from r1lab.train.rl import rl_engine, train_rl

    lora = apply_lora(model, cfg.train.lora, "train.lora")  # adapters in place; None = full fine-tuning
    engine = rl_engine(cfg, model, tokenizer)

    def on_eval(step: int) -> dict[str, float]:
        # an engine that holds its own weights (vLLM) also evaluates: it follows the policy, and a
        # second copy of it would not fit next to the trainer
        shared = None if isinstance(engine, LiveModelEngine) else engine
        if is_episodic(cfg):  # a tool-using policy is scored in its environment, as it is trained
            return episode_eval(cfg, shared or build_engine(model, tokenizer, cfg.rollout), data.eval, seed=cfg.seed)
        res = run_eval(cfg, model, tokenizer, data.eval, None, f"eval@{step}", show_progress=False, engine=shared)
        return {"eval/avg": res.summary[f"avg@{cfg.eval.n}"]}

    state = None
    resume = bool(cfg.resume) if resume is None else resume
    if resume:  # continue from the last checkpoint; what was logged (or found) after it is dropped
        from r1lab.train.checkpoint import load_latest

        state = load_latest(run.path)
        for name in ("metrics.jsonl", "samples.jsonl", "health.jsonl"):
            truncate_metrics(run.file(name), state["step"])
    health = HealthMonitor(cfg.health, run.file("health.jsonl"), append=resume)
    if state is not None:
        health.prime([r for r in read_metrics(run.file("metrics.jsonl")) if r["step"] > 0])
    try:
        with MetricsWriter(run.file("metrics.jsonl"), append=resume,
                           tracker=make_tracker(cfg, run.path, "rl")) as mw, \
                MetricsWriter(run.file("samples.jsonl"), append=resume) as sw:
            history = train_rl(cfg, model, tokenizer, engine, data.rl_prompts, metrics=mw, samples=sw,
                               on_eval=on_eval, show_progress=show_progress, health=health, run_path=run.path,
                               resume=state)
    except WorkerError as e:  # a worker process is gone: say where the run can continue from
        from r1lab.train.checkpoint import resume_hint

        raise WorkerError(f"{e}; {resume_hint(run.path)}") from None
    finally:
        engine.close()
    merge_lora(lora, model)
    save_model(model, tokenizer, run.checkpoint("rl"))
    k = cfg.cluster.off_policy_steps  # an asynchronous run: how old its samples were
    stale = {"staleness (share of samples k steps behind)": [f"staleness/hist/{i}" for i in range(k + 1)]} if k else {}
    plot_curves(read_metrics(run.file("metrics.jsonl")), {**RL_PANELS, **stale}, run.file("plots/rl.png"),
                f"RL ({cfg.algo.advantage})")
    return history


def health_section(cfg: RunConfig, run: RunDir) -> tuple[str, str]:
    """The report's run-health section of an RL stage: what the monitor wrote to health.jsonl."""
    findings = read_findings(run.file("health.jsonl")) if cfg.health.enabled else None
    steps = sum(1 for r in read_metrics(run.file("metrics.jsonl")) if r["step"] > 0)  # not value pretraining
    return "Run health (RL)", health_markdown(findings, steps=steps)


def check_dpo_config(cfg: RunConfig) -> list | None:
    """Reject a bad dpo section before anything is written (the loss's own settings; the section's
    domains were checked when it was read); returns the pairs of dpo.pairs_path, if any."""
    from r1lab.algos.preference import PREFERENCE_LOSSES
    from r1lab.data.pairs import load_pairs

    d = cfg.dpo
    PREFERENCE_LOSSES.bind(d.loss, d.loss_args, "dpo.loss_args")
    return load_pairs(d.pairs_path) if d.pairs_path else None


def run_dpo(cfg: RunConfig, run: RunDir, model, tokenizer, data: Data, show_progress: bool = True,
            log=print) -> list[dict[str, Any]]:
    """Preference optimisation. With dpo.pairs_path: one training pass over that file. Otherwise
    dpo.rounds rounds of: sample dpo.samples_per_problem completions per training problem with the
    current policy, verify, pair a correct against a wrong one (data/pairs-round<r>.jsonl and its
    manifest), train with the round's starting model as reference. One row per round comes back."""
    from r1lab.data.pairs import PairSettings, load_pairs, make_pairs
    from r1lab.data.pipeline import StepLog
    from r1lab.records import write_text_atomic
    from r1lab.plots import DPO_PANELS
    from r1lab.train.dpo import dpo_examples, train_dpo
    from r1lab.train.lora import apply_lora, merge_lora

    d = cfg.dpo
    fixed = check_dpo_config(cfg)
    pool = list(data.train)
    history: list[dict[str, Any]] = []
    step = 0
    with MetricsWriter(run.file("dpo_metrics.jsonl")) as mw:
        for r in range(1, d.rounds + 1):
            row: dict[str, Any] = {"round": r}
            if fixed is not None:
                pairs = fixed
            else:
                problems = pool
                if d.prompts_per_round and d.prompts_per_round < len(pool):
                    problems = random.Random(cfg.seed * 1000 + r).sample(pool, d.prompts_per_round)
                problems = [replace(p, metadata=dict(p.metadata)) for p in problems]  # pass rates go on copies
                engine = build_engine(model, tokenizer, cfg.rollout)
                sampler_name = str(run.checkpoint(f"dpo-round{r - 1}")) if r > 1 else str(cfg.init_from or cfg.model.path)
                s = PairSettings(model=sampler_name, k=d.samples_per_problem,
                                 temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                 max_new_tokens=cfg.sampling.max_new_tokens, seed=cfg.seed * 1000 + r,
                                 chunk=max(1, cfg.rollout.batch_size // d.samples_per_problem),
                                 batch_size=cfg.rollout.batch_size,
                                 timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers,
                                 chosen=d.chosen, rejected=d.rejected, pairs_per_problem=d.pairs_per_problem)
                steplog = StepLog(0, "pairs", s, run.file("data"))
                rates: list[float] = []
                started, t = time.strftime("%Y-%m-%dT%H:%M:%S"), time.time()
                rows = list(make_pairs(problems, s, steplog.drop, engine=engine, on_rate=rates.append))
                steplog.rows_in, steplog.rows_out, steplog.seconds = len(problems), len(rows), time.time() - t
                out = run.file(f"data/pairs-round{r}.jsonl")
                save_problems(out, rows)
                manifest = {"status": "ok", "pipeline": f"r1lab dpo, round {r}", "output": str(out),
                            "rows_out": len(rows), "started": started,
                            "seconds": round(steplog.seconds, 3), "steps": [steplog.to_dict(0.0)]}
                write_text_atomic(out.with_name(out.stem + ".manifest.json"), json.dumps(manifest, indent=1) + "\n")
                pairs = load_pairs(out) if rows else []
                row.update({"round/pass_rate": sum(rates) / max(1, len(rates)), "round/problems": len(problems),
                            "round/generated_samples": len(problems) * d.samples_per_problem,
                            "round/pairs": len(rows), "round/seconds_sampling": time.time() - t})
                log(f"dpo round {r}: {len(problems)} problems x {d.samples_per_problem} samples, pass rate "
                    f"{100 * row['round/pass_rate']:.1f}%, {len(rows)} pairs")
                if not rows:
                    raise DataError(f"dpo round {r}: no problem had both a correct and a wrong sample "
                                    f"({len(problems)} problems, pass rate {100 * row['round/pass_rate']:.1f}%)")
            mw.write(step, {k: v for k, v in row.items() if k.startswith("round/")})
            lora = apply_lora(model, d.lora, "dpo.lora")
            t = time.time()
            summary = train_dpo(model, tokenizer, dpo_examples(tokenizer, pairs), d, metrics=mw, seed=cfg.seed + r,
                                show_progress=show_progress, step_offset=step, tag={"dpo/round": r})
            model = merge_lora(lora, model)
            step += int(summary["dpo/steps"])
            row.update(summary)
            row["round/seconds_training"] = time.time() - t
            if d.rounds > 1:
                save_model(model, tokenizer, run.checkpoint(f"dpo-round{r}"))
            if d.eval_every_round and r < d.rounds:
                res = run_eval(cfg, model, tokenizer, data.eval, None, f"eval round {r}", show_progress=False)
                row["eval/avg"] = res.summary[f"avg@{cfg.eval.n}"]
                mw.write(step, {"eval/avg": row["eval/avg"]})
            history.append(row)
    save_model(model, tokenizer, run.checkpoint("dpo"))
    write_text_atomic(run.file("dpo_rounds.json"), json.dumps(history, indent=1, default=float) + "\n")
    plot_curves(read_metrics(run.file("dpo_metrics.jsonl")), DPO_PANELS, run.file("plots/dpo.png"),
                f"{d.loss.upper()} ({d.rounds} round{'s' if d.rounds > 1 else ''})")
    return history


# --------------------------------------------------------------------------------------------
# `r1lab sft | rl | dpo | cpt RECIPE`: a plan of one stage


# the settings a resume may change, by stage; `train.steps` continues a finished RL run (Stage.extends)
def _resumable_changes(kind: str) -> tuple[str, ...]:
    from r1lab.train.checkpoint import CPT_RESUMABLE_CHANGES, RESUMABLE_CHANGES, SFT_RESUMABLE_CHANGES

    return {"sft": SFT_RESUMABLE_CHANGES, "rl": RESUMABLE_CHANGES, "cpt": CPT_RESUMABLE_CHANGES}.get(kind, ("resume", "tracking"))


def stage_plan(cfg: RunConfig, kind: str, show_progress: bool = True, log=print) -> Plan:
    """`r1lab sft | rl | dpo | cpt`: one stage in out_dir/name, or in the run cfg.resume names (checked
    to be that run, with a checkpoint to continue from): the data, the policy, a held-out evaluation
    at the start (eval.at_start, not for SFT or CPT nor on a resume), the training, a held-out
    evaluation of the trained model, report.md. CPT reads, tokenises and packs its corpus before the
    run directory exists, so a bad corpus leaves nothing behind."""
    from r1lab.train.checkpoint import CPT_STATE_DIR, SFT_STATE_DIR, STATE_DIR, checkpoints

    if kind == "dpo":
        check_dpo_config(cfg)  # a bad loss name, policy or pairs file leaves no run directory behind
    if kind == "cpt":
        check_corpus(cfg)  # a missing, empty or field-less corpus fails before the data and model are built
    folder = {"sft": SFT_STATE_DIR, "rl": STATE_DIR, "cpt": CPT_STATE_DIR}.get(kind)
    allowed = _resumable_changes(kind)
    if cfg.resume:
        path = run_dir_of(cfg)
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"resume: {path} is not a run directory (no config.yaml)")
        if folder and not checkpoints(path, folder) and read_marker(path, kind) is None:
            setting = {"sft": "sft.save_every", "cpt": "cpt.save_every"}.get(kind, "train.save_every")
            raise ConfigError(f"resume: {path} has no resumable checkpoint (checkpoints/{folder}/step-*; "
                              f"{setting} > 0 writes them)")
    cfg = resumed_config(cfg, allowed) if cfg.resume else name_run(cfg, kind)
    path = run_dir_of(cfg)
    extends = {"train.steps": cfg.train.steps} if kind == "rl" else {}
    prepared = _prepare_cpt(cfg, log) if kind == "cpt" else None

    def start() -> None:
        if cfg.resume:
            RunDir(path)
        else:
            RunDir.create(cfg)
            log(f"r1lab {kind} -> {path}")

    stage = Stage(kind, lambda ctx: _train_and_evaluate(cfg, kind, RunDir(path), ctx.resuming(kind), show_progress, log,
                                                        prepared),
                  settings_of(cfg, ("name", "out_dir", *allowed, *extends)), extends=extends,
                  checkpoints=(path, folder) if folder else None)
    return Plan(kind, path, [stage], resume=bool(cfg.resume), start=start)


def _prepare_cpt(cfg: RunConfig, log) -> tuple[Data, Any, Any, PackedCorpus]:
    """The data (the tiny model's tokenizer is trained on it; its held-out problems are scored at
    the end), the starting model and the packed corpus of a CPT run, before anything is written."""
    data = prepare_data(cfg, None, log=log)
    model, tok = load_policy(cfg, data)
    corpus = prepare_corpus(cfg, tok, getattr(model.config, "max_position_embeddings", None))
    return data, model, tok, corpus


def _train_and_evaluate(cfg: RunConfig, kind: str, run: RunDir, resuming: bool, show_progress: bool,
                        log, prepared: tuple | None = None) -> dict[str, Any]:
    """The one stage of `r1lab sft | rl | dpo | cpt`; returns the held-out summaries by stage."""
    from r1lab.report import stage_table, write_report

    if prepared is not None:  # CPT: built before the run directory existed
        data, model, tok, corpus = prepared
    else:
        data = prepare_data(cfg, run, log=log)
        model, tok = load_policy(cfg, data)
    if kind == "rl" and cfg.train.freeze_vision:  # a text model refuses it here, before the start is evaluated
        from r1lab.vision import freeze_vision_tower

        freeze_vision_tower(model, "train.freeze_vision")
    stages = {}
    if kind not in ("sft", "cpt") and cfg.eval.at_start and not resuming:  # a resumed run measured its start the first time
        stages["start"] = run_eval(cfg, model, tok, data.eval, run.file("eval/start.jsonl"), "eval start",
                                   show_progress).summary
    sections = []
    if kind == "cpt":
        summary = run_cpt(cfg, run, model, tok, data, show_progress=show_progress, resume=resuming, corpus=corpus,
                          log=log)
        rows = [r for r in read_metrics(run.file("cpt_metrics.jsonl")) if "cpt/heldout_ppl" in r]
        ppl = (f"held-out perplexity {rows[0]['cpt/heldout_ppl']:.3f} at step {rows[0]['step']} -> "
               f"{rows[-1]['cpt/heldout_ppl']:.3f} at step {rows[-1]['step']}" if rows else "no held-out documents")
        sections = [("Continued pre-training", f"{summary['cpt/steps']} steps, {summary['cpt/tokens']} tokens; {ppl}; "
                     f"corpus: cpt_corpus.json\n\n![cpt](plots/cpt.png)")]
    elif kind == "sft":
        run_sft(cfg, run, model, tok, data, show_progress=show_progress, resume=resuming)
    elif kind == "rl":
        run_rl(cfg, run, model, tok, data, show_progress=show_progress, resume=resuming)
        sections = [health_section(cfg, run)]
    else:
        history = run_dpo(cfg, run, model, tok, data, show_progress=show_progress, log=log)
        shown = ("round/pass_rate", "round/pairs", "dpo/margin", "dpo/accuracy", "eval/avg")
        rounds = "\n".join(f"- round {h['round']}: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in h.items() if k in shown) for h in history)
        sections = [("Rounds", rounds), ("Training curves", "![dpo](plots/dpo.png)")]
    stages[kind] = run_eval(cfg, model, tok, data.eval, run.file(f"eval/{kind}.jsonl"), f"eval {kind}",
                            show_progress).summary
    table = stage_table(stages, cfg.eval.n, cfg.eval.ks)
    write_report(run.file("report.md"), f"r1lab {kind}: {run.path.name}", [("Held-out evaluation", table), *sections])
    log(table)
    log(f"checkpoint: {run.checkpoint(kind)}")
    return stages
