"""Continued pre-training: the next-token loss on every token of a text corpus (DeepSeekMath's
continued training on math web text, at r1lab's scale). No chat template, no prompt masking.

Packing. Each document's token ids are followed by EOS and the documents are concatenated into one
stream, cut into rows of exactly seq_len tokens; the tail that does not fill a row is left out of
training (counted). A document may run on from one row into the next.

Boundaries (`boundaries`). With "reset" (default) each row is a sequence of segments, one per
document piece: position ids restart at 0 at every segment, and transformers' masking code turns
position ids that restart (with no 2-D attention mask) into a block-diagonal causal mask, so a token
attends only to earlier tokens of its own document, exactly as if the document were alone in the row
(tested in float64 against separate forwards). The first token of a segment is then not a target:
nothing of its document precedes it. With "cross" a row is one causal sequence with positions
0..seq_len-1 and every next token is a target, documents seeing the ones before them (what GPT-style
packing does; cheaper for attention kernels without a packed mask).

The loss is the token mean over the targets of the batch; the held-out perplexity is exp of the
token-mean NLL over the held-out rows (their tail is kept as a shorter last row).

With a run directory, a resumable checkpoint (`checkpoints/cpt-state/`) is written every
`save_every` steps and at the end: the step, the weights, optimizer and scheduler, the shuffling
stream, the epoch's order and the position in it, the tokens and seconds so far, the last logged
metrics and the process's random streams; a run resumed from it logs and computes what the
uninterrupted run does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r1lab.config import CPTConfig
from r1lab.models import logprobs_of_targets, model_device
from r1lab.runs import MetricsWriter
from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.train.checkpoint import CPT_STATE_DIR
from r1lab.train.common import make_optimizer, warmup_constant, warmup_cosine
from r1lab.train.epochs import BatchResult, EpochLoop, planned_steps


@dataclass
class Packed:
    """Rows of packed documents. input_ids, position_ids: [N, L]; target_mask: [N, L-1], 1 where
    input_ids[:, t+1] is a target of the loss (aligned with the log-probs of positions 0..L-2)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    target_mask: torch.Tensor
    dropped_tokens: int  # the tail that did not fill a row (0 when keep_tail)

    def __len__(self) -> int:
        return len(self.input_ids)

    def rows(self, index: list[int]) -> "Packed":
        return Packed(self.input_ids[index], self.position_ids[index], self.target_mask[index], 0)


def pack_documents(documents: list[list[int]], eos_id: int, seq_len: int, reset: bool = True,
                   keep_tail: bool = False) -> list[Packed]:
    """Documents (token ids) -> rows of seq_len tokens, each document followed by `eos_id`. Returns one
    Packed of the full rows, and with `keep_tail` a second one holding the shorter last row (if any)."""
    stream: list[int] = []
    doc_of: list[int] = []  # the document each token of the stream belongs to
    for d, ids in enumerate(documents):
        stream += [*ids, eos_id]
        doc_of += [d] * (len(ids) + 1)
    full = len(stream) // seq_len
    groups = [[(r * seq_len, seq_len) for r in range(full)]]  # (start in the stream, length) of each row
    if keep_tail and len(stream) % seq_len:
        groups.append([(full * seq_len, len(stream) - full * seq_len)])
    packed = []
    for group in groups:
        if not group:
            continue
        ids = torch.tensor([stream[s:s + L] for s, L in group], dtype=torch.long)
        doc = torch.tensor([doc_of[s:s + L] for s, L in group], dtype=torch.long)
        L = ids.shape[1]
        if reset:
            # a segment starts at the row's first token and wherever the document changes
            starts = torch.ones_like(doc, dtype=torch.bool)
            starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
            index = torch.arange(L).expand_as(doc)
            segment_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
            position_ids = index - segment_start
            target_mask = (doc[:, 1:] == doc[:, :-1]).float()
        else:
            position_ids = torch.arange(L).expand_as(doc).clone()
            target_mask = torch.ones(len(group), L - 1)
        packed.append(Packed(ids, position_ids, target_mask, 0))
    if not packed:
        packed = [Packed(torch.zeros(0, seq_len, dtype=torch.long), torch.zeros(0, seq_len, dtype=torch.long),
                         torch.zeros(0, seq_len - 1), 0)]
    packed[0].dropped_tokens = 0 if keep_tail else len(stream) - full * seq_len
    return packed


def split_documents(documents: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) documents: the round(fraction * N) documents (at least one when fraction
    > 0) whose text hashes lowest are held out, so the split depends on the texts alone, not on their
    order, a seed or which other documents are in the corpus."""
    import hashlib

    if fraction <= 0:
        return list(documents), []
    k = max(1, round(fraction * len(documents)))
    ranked = sorted(range(len(documents)), key=lambda i: hashlib.blake2b(documents[i].encode(), digest_size=8).digest())
    held = set(ranked[:k])
    return ([d for i, d in enumerate(documents) if i not in held], [d for i, d in enumerate(documents) if i in held])


def packed_logprobs(model, batch: Packed, reset: bool = True) -> torch.Tensor:
    """log p(input_ids[:, t+1] | its context) for t = 0..L-2: [B, L-1], float32. With `reset` the
    position ids restart per document and no 2-D attention mask is passed, so transformers builds
    the block-diagonal causal mask from them."""
    device = model_device(model)
    ids = batch.input_ids.to(device)
    kwargs = {"position_ids": batch.position_ids.to(device)} if reset else {}
    logits = model(input_ids=ids, attention_mask=None, use_cache=False, **kwargs).logits[:, :-1]
    logprobs, _ = logprobs_of_targets(logits, ids[:, 1:])
    return logprobs.cpu()


def cpt_loss(model, batch: Packed, reset: bool = True) -> tuple[torch.Tensor, int]:
    """Token-mean NLL over the batch's targets; returns (loss, number of targets)."""
    with trainer_attention():
        logprobs = packed_logprobs(model, batch, reset)
    n = int(batch.target_mask.sum().item())
    return -(logprobs * batch.target_mask).sum() / max(n, 1), n


@torch.no_grad()
def heldout_nll(model, parts: list[Packed], batch_size: int, reset: bool = True) -> tuple[float, int]:
    """(token-mean NLL, targets) over held-out rows; (nan, 0) when there are none."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for part in parts:
        for b in range(0, len(part), batch_size):
            rows = part.rows(list(range(b, min(b + batch_size, len(part)))))
            logprobs = packed_logprobs(model, rows, reset).double()
            total -= float((logprobs * rows.target_mask.double()).sum())
            count += int(rows.target_mask.sum())
    model.train(was_training)
    return (total / count if count else float("nan")), count


def train_cpt(
    model,
    train: Packed,
    heldout: list[Packed],
    cfg: CPTConfig,
    metrics: MetricsWriter | None = None,
    seed: int = 0,
    show_progress: bool = True,
    run_path: Path | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Next-token training on the packed rows `train` for cfg.epochs (at most cfg.max_steps steps),
    the held-out perplexity at step 0, every cfg.eval_every steps and at the end. With `run_path`,
    resumable checkpoints are written there; `resume` (train/checkpoint.load_latest with
    CPT_STATE_DIR) continues from one, its random streams already restored."""
    if not len(train):
        raise ValueError("continued pre-training needs at least one packed row")
    reset = cfg.boundaries == "reset"
    loop = EpochLoop("cpt", "rows", CPT_STATE_DIR, cfg.batch_size,
                     planned_steps(len(train), cfg.batch_size, cfg.epochs, cfg.max_steps), cfg.grad_clip,
                     cfg.save_every, cfg.keep_checkpoints)
    use_cpu_training_attention(model)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = (warmup_cosine(opt, cfg.warmup_steps, loop.total) if cfg.schedule == "cosine"
             else warmup_constant(opt, cfg.warmup_steps))

    def evaluate() -> dict[str, float]:
        if not heldout:
            return {}
        nll, n = heldout_nll(model, heldout, cfg.batch_size, reset)
        return {"cpt/heldout_loss": nll, "cpt/heldout_ppl": math.exp(nll), "cpt/heldout_tokens": n} if n else {}

    def batch_step(index: list[int]) -> BatchResult:
        batch = train.rows(index)
        loss, _ = cpt_loss(model, batch, reset)
        return BatchResult(loss, batch.input_ids.numel())

    def after_step(step: int, last: dict[str, float]) -> dict[str, float]:
        return evaluate() if (cfg.eval_every and step % cfg.eval_every == 0) or step == loop.total else {}

    def postfix(last: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{last['cpt/loss']:.3f}",
                **({"ppl": f"{last['cpt/heldout_ppl']:.2f}"} if "cpt/heldout_ppl" in last else {})}

    if resume is None and metrics is not None and (start_eval := evaluate()):
        metrics.write(0, start_eval)  # the starting model's held-out perplexity
    step, last, seconds = loop.run(model, opt, sched, len(train), batch_step, seed, after_step=after_step,
                                   postfix=postfix, metrics=metrics, show_progress=show_progress,
                                   run_path=run_path, resume=resume)
    return {**last, "cpt/steps": step, "cpt/seconds": seconds}
