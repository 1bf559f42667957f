"""The epoch loop SFT and continued pre-training share: shuffled mini-batches over a fixed set of
items for a number of epochs (at most a number of steps), one optimizer step per mini-batch, metrics
and a progress bar every step, and resumable checkpoints.

A checkpoint holds the step, the model's weights, optimizer and scheduler, the shuffling stream,
the current epoch's order and the position in it, the tokens and seconds so far and the last logged
metrics; the process's random streams are saved and restored by train/checkpoint. A run resumed
from one logs and computes what the uninterrupted run does: the order of an epoch is drawn once, at
its start, and a resumed run continues the saved order rather than drawing a new one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from r1lab.runs import MetricsWriter
from r1lab.train.checkpoint import save_state
from r1lab.train.common import grad_norm_clip


def planned_steps(n_items: int, batch_size: int, epochs: int, max_steps: int = 0) -> int:
    """Optimizer steps of `epochs` passes over `n_items` in mini-batches (the last one short),
    capped at `max_steps` when it is set."""
    total = (n_items + batch_size - 1) // batch_size * epochs
    return min(total, max_steps) if max_steps else total


@dataclass
class BatchResult:
    """What one mini-batch's forward gives the loop: the loss to minimise and the tokens it read
    (for the tokens-per-second rate)."""

    loss: torch.Tensor
    tokens: int


@dataclass
class EpochLoop:
    """One supervised run's loop. `stage` names the metrics' prefix and the progress bar ("sft",
    "cpt"); `items` is what a checkpoint calls the training set's size (its check on resume)."""

    stage: str
    items: str
    state_dir: str
    batch_size: int
    total: int
    grad_clip: float
    save_every: int = 0
    keep_checkpoints: int = 0

    def run(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        n_items: int,
        batch_step: Callable[[list[int]], BatchResult],
        seed: int,
        *,
        after_step: Callable[[int, dict[str, float]], dict[str, float]] | None = None,
        postfix: Callable[[dict[str, float]], dict[str, str]] | None = None,
        metrics: MetricsWriter | None = None,
        show_progress: bool = True,
        run_path: Path | None = None,
        resume: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, float], float]:
        """Train until `total` steps; returns (steps, the last metrics, seconds including those
        before a resume). The epochs' orders and torch's stream start from `seed`. `batch_step(indices)` computes a mini-batch's loss; `after_step(step, last)`
        may add metrics (an evaluation) before they are written. With `run_path` and `save_every`,
        checkpoints go to `run_path`/checkpoints/`state_dir`; `resume` (train/checkpoint.load_latest)
        continues from one, its random streams already restored."""
        p = self.stage
        rng = random.Random(seed)  # the epochs' orders
        torch_rng = torch.get_rng_state()
        torch.manual_seed(seed)
        step, tokens_seen, seconds_before, order, start = 0, 0, 0.0, None, 0
        last: dict[str, float] = {}
        if resume is not None:
            if resume["total"] != self.total or resume[self.items] != n_items:
                raise ValueError(f"the {p.upper()} checkpoint is of {resume['total']} steps over "
                                 f"{resume[self.items]} {self.items}, this run has {self.total} over {n_items}")
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            rng.setstate(resume["shuffle_rng"])
            torch.set_rng_state(torch_rng)  # the stream load_latest restored, not the fresh seed's
            step, tokens_seen, seconds_before = resume["step"], resume["tokens_seen"], resume["seconds"]
            order, start, last = resume["order"], resume["position"], resume["last"]
        save_every = self.save_every if run_path is not None else 0
        model.train()
        t0 = time.time()
        bar = tqdm(total=self.total, desc=p, unit="step", disable=not show_progress, dynamic_ncols=True, initial=step)
        while step < self.total:
            if order is None:  # a new epoch
                order = list(range(n_items))
                rng.shuffle(order)
                start = 0
            for b in range(start, len(order), self.batch_size):
                if step >= self.total:
                    break
                result = batch_step(order[b:b + self.batch_size])
                optimizer.zero_grad(set_to_none=True)
                result.loss.backward()
                gnorm = grad_norm_clip(model, self.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                tokens_seen += result.tokens
                elapsed = seconds_before + time.time() - t0
                last = {f"{p}/loss": float(result.loss.item()), f"{p}/grad_norm": gnorm,
                        f"{p}/lr": scheduler.get_last_lr()[0], f"{p}/tokens": tokens_seen,
                        f"{p}/tokens_per_s": tokens_seen / max(elapsed, 1e-9)}
                if after_step is not None:
                    last.update(after_step(step, last))
                if metrics:
                    metrics.write(step, last)
                bar.update(1)
                bar.set_postfix(postfix(last) if postfix else {"loss": f"{last[f'{p}/loss']:.3f}"})
                if save_every and (step % save_every == 0 or step == self.total):
                    epoch_done = b + self.batch_size >= len(order)
                    save_state(run_path, step, {
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "shuffle_rng": rng.getstate(),
                        "order": None if epoch_done else order, "position": b + self.batch_size,
                        "tokens_seen": tokens_seen, "seconds": elapsed, "last": last,
                        "total": self.total, self.items: n_items}, self.keep_checkpoints, self.state_dir)
            order = None
        bar.close()
        model.eval()
        return step, last, seconds_before + time.time() - t0
