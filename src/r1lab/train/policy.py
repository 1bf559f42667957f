"""The policy worker: the models the RL loop trains and the passes it asks of them.

`PolicyWorker` is what the controller (train/rl.py) talks to; `LocalPolicyWorker` runs it in this
process: the policy, the optional frozen reference and value model, their optimizers. A worker
group sharded over several processes implements the same methods.

The update is PPO-style: for each epoch of the batch's update plan, each mini-batch is one
optimizer step whose gradient is summed over its micro-batches, each micro-batch's loss normalised
by the counts of the whole mini-batch (`aggregate`), so micro-batching never changes the gradient.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch

from r1lab.algos import aggregate
from r1lab.algos.losses import adaptive_entropy_coef, positive_nll, value_loss
from r1lab.config import RunConfig
from r1lab.errors import ConfigError
from r1lab.models import model_device, token_logprobs
from r1lab.train.attention import trainer_attention, use_cpu_training_attention
from r1lab.train.batch import RolloutBatch, first_response_col
from r1lab.train.common import EmbeddingGradInPlace, grad_norm_clip, make_optimizer, warmup_constant, warmup_cosine
from r1lab.train.methods import BoundMethod
from r1lab.train.prefix import SharedPrefix

log = logging.getLogger(__name__)


class PolicyWorker(Protocol):
    """What the controller needs of the trained models."""

    version: int  # optimizer steps taken by the policy: the version an engine samples from
    has_reference: bool
    has_critic: bool
    sharded: bool  # its checkpoints are shards each worker writes (save_shards), not one state_dict

    def logprobs(self, batch: RolloutBatch, model: str = "policy") -> torch.Tensor:
        """[B, L-1] log-probs of the batch's tokens, no gradient: model 'policy' or 'reference'."""

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        """[B, L-1] value estimates of the critic, no gradient."""

    def update_policy(self, batch: RolloutBatch) -> dict[str, float]:
        """The policy's epochs over the batch's update plan; returns step statistics."""

    def update_critic(self, batch: RolloutBatch) -> dict[str, float]:
        """The critic's epochs over the same plan, regressing on batch.returns."""

    def engine_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights as (Hugging Face name, tensor), adapters merged: what an engine loads."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save_shards(self, folder: str | Path) -> dict[str, Any]:
        """A sharded worker: each worker writes its shards of the models and optimizers into `folder`;
        returns the rest of the state (what load_state_dict reads back with the shards)."""


def rl_scheduler(optimizer: torch.optim.Optimizer, train) -> torch.optim.lr_scheduler.LambdaLR:
    """train.schedule over the run's optimizer steps: linear warmup, then constant or cosine to 0.1 lr."""
    if train.schedule == "cosine":
        return warmup_cosine(optimizer, train.warmup_steps, train.steps * train.ppo_epochs * train.mini_batches)
    return warmup_constant(optimizer, train.warmup_steps)


class LocalPolicyWorker:
    sharded = False  # one process: state_dict() holds everything
    embedding_grad_in_place = True  # EmbeddingGradInPlace for the input embedding's gradient
    autocast_cache = True  # torch.autocast's cache: each weight cast to bf16 once per optimizer step

    def __init__(self, cfg: RunConfig, model, method: BoundMethod):
        self.cfg = cfg
        self.model = model
        self.method = method
        use_cpu_training_attention(model)  # before the reference and critic copies are made
        if cfg.train.freeze_vision:
            from r1lab.vision import freeze_vision_tower

            freeze_vision_tower(model, "train.freeze_vision")
        algo = cfg.algo
        # no reference model at all when the KL term is off (no wasted forward, no memory)
        self.ref_model = None
        if method.needs_reference:
            self.ref_model = copy.deepcopy(model).eval()
            self.ref_model.requires_grad_(False)
        self.critic = self.critic_optimizer = None
        if algo.critic:
            from r1lab.train.critic import ValueModel

            self.critic = ValueModel(model)
        self._place_models()
        # the optimizers over the parameters as placed (a sharded worker's: its shards)
        if self.critic is not None:
            self.critic_optimizer = make_optimizer(self.critic, algo.critic_lr, cfg.train.weight_decay)
        self.optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
        self.scheduler = rl_scheduler(self.optimizer, cfg.train)
        self.entropy_coef = algo.entropy_coef
        self.last_entropy = float("inf")
        self.version = 0
        if cfg.train.bf16:
            from r1lab.models import warn_if_emulated_bf16

            warn_if_emulated_bf16("train.bf16")

    # -- what a worker of a sharded group changes (train/distributed.py) ---------------------------

    def _place_models(self) -> None:
        """Put the models where this worker trains them, before their optimizers are made."""

    def _share(self, micro: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
        """This worker's micro-batches of a mini-batch, and how many padding micro-batches (weight
        0) it runs so that every worker of a group runs as many: all of them, none."""
        return micro, 0

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's share of the mini-batch loss."""
        loss.backward()

    def _prefix_backward(self, prefix: SharedPrefix) -> None:
        """The prompts' gradient, sent back through their forward after the micro-batches' backward."""
        prefix.backward()

    def _clip_grads(self, model, max_norm: float) -> float:
        """The gradient norm of `model`, clipped to max_norm."""
        return grad_norm_clip(model, max_norm)

    def _sum_over_workers(self, sums: dict[str, float], tokens: float) -> tuple[dict[str, float], float]:
        """An update's statistic sums and token count, over every worker of the group."""
        return sums, tokens

    @property
    def has_reference(self) -> bool:
        return self.ref_model is not None

    @property
    def has_critic(self) -> bool:
        return self.critic is not None

    # -- forwards ---------------------------------------------------------------------------------

    def autocast(self):
        """bf16 compute for the trainer's forwards (train.bf16); parameters, gradients and the
        optimizer state stay float32 (the master weights), log-softmax runs in float32."""
        return torch.autocast(model_device(self.model).type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16,
                              cache_enabled=self.autocast_cache)

    def _logprobs(self, model, b: RolloutBatch, with_entropy: bool = False, entropy_grad: bool = True,
                  prefix: SharedPrefix | None = None, idx: torch.Tensor | None = None):
        """Log-probs (and entropy) of rows `b`; with `prefix`, the rows `idx` of the batch it was
        built on run only their responses on top of their prompts' shared K/V."""
        with self.autocast(), trainer_attention():
            if prefix is not None:
                return prefix.logprobs(idx, b.temperature, with_entropy=with_entropy, entropy_grad=entropy_grad)
            return token_logprobs(model, b.input_ids, b.attention_mask, b.temperature, with_entropy=with_entropy,
                                  start=first_response_col(b.response_mask), entropy_grad=entropy_grad, vision=b.vision)

    def _shared_prefix(self, model, batch: RolloutBatch, rows: torch.Tensor) -> SharedPrefix | None:
        """Each distinct prompt among `rows` run once through `model` (train.shared_prefix), or None.
        Not for a batch with images: the prompt's K/V would have to come from a forward with its
        pixels, which SharedPrefix does not run; those rows take the full forward."""
        if not self.cfg.train.shared_prefix:
            return None
        if batch.vision is not None:
            if not getattr(self, "_said_no_shared_prefix", False):
                log.warning("train.shared_prefix: off for batches with images (each row runs its full forward)")
                self._said_no_shared_prefix = True
            return None
        with self.autocast(), trainer_attention():
            return SharedPrefix.build(model, batch.input_ids, batch.attention_mask, batch.response_mask, rows,
                                      agree=self._prefix_agreement())

    def _prefix_agreement(self) -> Callable[[bool], bool] | None:
        """How the workers of a group agree to build the prompts' forward together (SharedPrefix.build):
        None, one process decides alone."""
        return None

    @torch.no_grad()
    def _first_pass(self, fn: Callable[[RolloutBatch, torch.Tensor, SharedPrefix | None], torch.Tensor],
                    batch: RolloutBatch, prefix_model=None) -> torch.Tensor:
        """fn(rows, idx, prefix) over the micro-batches of the plan's first epoch, scattered back into
        a [B, L-1] tensor. The shared prompt forwards are built per mini-batch exactly as the update
        builds them, so this pass and the first update compute the same numbers."""
        out = torch.zeros_like(batch.response_mask)
        for micro in batch.plan[0]:
            mine, pads = self._share(micro)
            pad = (mine or micro)[0]  # a padding micro-batch's rows: among the ones the prompts' forward serves
            prefix = self._shared_prefix(prefix_model, batch, torch.cat(mine or [pad])) if prefix_model is not None else None
            for idx in mine:
                v = fn(batch.rows(idx), idx, prefix)
                out[idx, : v.shape[1]] = v.to(out.device)
            for _ in range(pads):
                fn(batch.rows(pad), pad, prefix)
        return out * batch.response_mask

    def logprobs(self, batch: RolloutBatch, model: str = "policy") -> torch.Tensor:
        m = {"policy": self.model, "reference": self.ref_model}[model]
        if m is None:
            raise ValueError(f"no {model} model in this run")
        return self._first_pass(lambda b, idx, pre: self._logprobs(m, b, prefix=pre, idx=idx)[0], batch, m)

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        if batch.vision is not None:  # the value head reads the backbone without the pixels
            raise ConfigError("algo.critic: a value model cannot read images yet; use a critic-free method (grpo, ...)")
        return self._first_pass(lambda b, idx, pre: self.critic(b.input_ids, b.attention_mask), batch)

    def engine_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Adapter-free names and weights: under LoRA, W + (alpha / r) B A for each adapted layer."""
        from r1lab.train.lora import merged_weights

        yield from merged_weights(self.model)

    # -- updates ----------------------------------------------------------------------------------

    def update_policy(self, batch: RolloutBatch) -> dict[str, float]:
        algo, train = self.cfg.algo, self.cfg.train
        norm_len = algo.loss_agg_norm or float(batch.max_new_tokens)
        entropy_on = self.entropy_coef > 0 and (not algo.entropy_control or self.last_entropy < algo.entropy_target)
        sums: dict[str, float] = {}
        add = lambda k, v: sums.__setitem__(k, sums.get(k, 0.0) + float(v))  # noqa: E731
        scratch: dict[str, float] = {}  # a padding micro-batch's statistics, dropped
        drop = lambda k, v: None  # noqa: E731
        tokens_total = 0.0
        self.model.train()
        for epoch in batch.plan:
            for micro in epoch:
                mb = torch.cat(micro)
                num_seqs, num_tokens = len(mb), int(batch.loss_mask[mb].sum())
                mine, pads = self._share(micro)
                pad = (mine or micro)[0]  # a padding micro-batch's rows: among the ones the prompts' forward serves
                self.optimizer.zero_grad(set_to_none=True)
                # one autocast context per optimizer step: each weight is cast to bf16 once for all
                # its micro-batches (the cache lives until the outermost context exits; autocast_cache)
                with self.autocast(), EmbeddingGradInPlace(self.model, enabled=self.embedding_grad_in_place):
                    # each prompt of this worker's rows once, its K/V shared by their micro-batches
                    prefix = self._shared_prefix(self.model, batch, torch.cat(mine or [pad]))
                    for idx in mine:
                        sub = batch.rows(idx)
                        loss = self._policy_loss(sub, idx, prefix, num_seqs, num_tokens, norm_len, entropy_on, add, sums)
                        self._backward(loss)
                        tokens_total += float(sub.loss_mask.sum())
                    for _ in range(pads):  # through the prompts' forward too: the group's backward collectives match
                        loss = self._policy_loss(batch.rows(pad), pad, prefix, num_seqs, num_tokens, norm_len,
                                                 entropy_on, drop, scratch)
                        (loss * 0).backward()
                if prefix is not None:  # the prompts' share of the gradient, once for all micro-batches
                    self._prefix_backward(prefix)
                add("grad_norm", self._clip_grads(self.model, train.grad_clip))
                self.optimizer.step()
                self.version += 1
        self.scheduler.step()
        sums, tokens_total = self._sum_over_workers(sums, tokens_total)
        return self._policy_stats(batch, sums, max(tokens_total, 1.0), entropy_on)

    def _policy_loss(self, sub: RolloutBatch, idx, prefix, num_seqs: int, num_tokens: int, norm_len: float,
                     entropy_on: bool, add, sums: dict[str, float]) -> torch.Tensor:
        """One micro-batch's share of the loss: policy gradient [x rollout correction] [+ KL]
        [- entropy bonus] [+ NLL of the correct responses]; logs its terms into `sums`."""
        algo, method = self.cfg.algo, self.method
        mask = sub.loss_mask
        agg = lambda x: aggregate(x, mask, algo.loss_agg, num_seqs, num_tokens, norm_len)  # noqa: E731
        logprobs, entropy = self._logprobs(self.model, sub, with_entropy=True, entropy_grad=entropy_on,
                                           prefix=prefix, idx=idx)
        old = sub.old_logprobs if sub.old_logprobs is not None else logprobs.detach()
        extra = {"response_mask": mask} if method.loss_takes_mask else {}
        per_token, stats = method.policy_loss(logprobs, old, sub.advantages, **extra)
        if method.correction is not None:  # the tokens came from the engine, not from pi_old
            w = method.correction(old, sub.engine_logprobs, sub.response_mask)
            raw = torch.exp((old - sub.engine_logprobs).detach()) * sub.response_mask
            per_token = per_token * w
            stats = {**stats, "tis_weight": w, "tis_capped": (w != raw).float(),
                     "tis_dropped": (w == 0).float()}  # tokens a masked correction drops
        pg_loss = agg(per_token)
        loss = pg_loss
        # KL and entropy use the same aggregation as the policy loss
        if method.kl is not None:
            kl = method.kl(logprobs, sub.ref_logprobs)
            if not algo.kl_in_reward:
                loss = loss + algo.kl_coef * agg(kl)
            add("kl", (kl.detach() * mask).sum())
        if entropy_on:
            loss = loss - self.entropy_coef * agg(entropy)
        if algo.pos_nll_coef and sub.correct is not None and bool(sub.correct.any()):
            nll = agg(positive_nll(logprobs, mask, sub.correct))
            loss = loss + algo.pos_nll_coef * nll
            add("pos_nll", nll.detach())
        add("loss", loss.detach())
        add("pg_loss", pg_loss.detach())
        add("entropy", (entropy.detach() * mask).sum())
        for name, v in stats.items():
            add(name, (v * mask).sum())
        if sub.old_logprobs is None:  # the first update's log-probs are pi_old's: compare with the engine's
            diff = (sub.engine_logprobs - logprobs.detach()).abs() * sub.response_mask
            sums["logprob_diff_max"] = max(sums.get("logprob_diff_max", 0.0), float(diff.max()))
            add("logprob_diff_sum", diff.sum())
        return loss

    def _policy_stats(self, batch: RolloutBatch, sums: dict[str, float], tokens: float, entropy_on: bool) -> dict[str, float]:
        algo, train = self.cfg.algo, self.cfg.train
        n_updates = sum(len(epoch) for epoch in batch.plan)
        self.last_entropy = sums["entropy"] / tokens
        out = {
            "loss/total": sums["loss"] / train.ppo_epochs,
            "loss/policy": sums["pg_loss"] / train.ppo_epochs,
            "policy/entropy": self.last_entropy,
            "policy/entropy_coef": self.entropy_coef if entropy_on else 0.0,
            "policy/grad_norm": sums["grad_norm"] / n_updates,
            "policy/lr": self.scheduler.get_last_lr()[0],
        }
        for name in ("clip_frac", "clip_frac_high", "clip_frac_low", "ratio", "tis_weight", "tis_capped", "tis_dropped"):
            if name in sums:
                out[f"policy/{name}"] = sums[name] / tokens
        if "kl" in sums:
            out["policy/kl"] = sums["kl"] / tokens
        if "pos_nll" in sums:
            out["loss/pos_nll"] = sums["pos_nll"] / train.ppo_epochs
        # engine vs trainer log-probs of the sampled tokens, every step (docs/pitfalls.md, "Engine/trainer mismatch")
        response_tokens = max(float(batch.response_mask.sum()), 1)
        if "logprob_diff_sum" in sums:
            out["rollout/logprob_diff_mean"] = sums["logprob_diff_sum"] / response_tokens
            out["rollout/logprob_diff_max"] = sums["logprob_diff_max"]
        elif batch.old_logprobs is not None:
            diff = (batch.engine_logprobs - batch.old_logprobs).abs() * batch.response_mask
            out["rollout/logprob_diff_mean"] = float(diff.sum()) / response_tokens
            out["rollout/logprob_diff_max"] = float(diff.max())
        if algo.entropy_control:  # Skywork-OR1: adapt the coefficient to the measured entropy
            self.entropy_coef = adaptive_entropy_coef(self.entropy_coef, self.last_entropy, algo.entropy_target,
                                                      algo.entropy_delta, algo.entropy_max_coef)
        return out

    def update_critic(self, batch: RolloutBatch) -> dict[str, float]:
        sums: dict[str, float] = {}
        add = lambda k, v: sums.__setitem__(k, sums.get(k, 0.0) + float(v))  # noqa: E731
        tokens_total = 0.0
        for epoch in batch.plan:
            for micro in epoch:
                mb = torch.cat(micro)
                num_seqs, num_tokens = len(mb), int(batch.response_mask[mb].sum())
                mine, pads = self._share(micro)
                self.critic_optimizer.zero_grad(set_to_none=True)
                for idx in mine:
                    sub = batch.rows(idx)
                    self._backward(self._critic_loss(sub, num_seqs, num_tokens, add))
                    tokens_total += float(sub.response_mask.sum())
                for _ in range(pads):
                    (self._critic_loss(batch.rows(micro[0]), num_seqs, num_tokens) * 0).backward()
                add("critic_grad_norm", self._clip_grads(self.critic, self.cfg.train.grad_clip))
                self.critic_optimizer.step()
        sums, tokens_total = self._sum_over_workers(sums, tokens_total)
        return self._critic_stats(batch, sums, tokens_total)

    def _critic_loss(self, sub: RolloutBatch, num_seqs: int, num_tokens: int, add=None) -> torch.Tensor:
        """One micro-batch's clipped value loss, normalised by the counts of its whole mini-batch;
        with `add`, its loss and squared error are logged."""
        values = self.critic(sub.input_ids, sub.attention_mask)
        vl = aggregate(value_loss(values, sub.old_values, sub.returns, self.cfg.algo.value_clip),
                       sub.response_mask, "token-mean", num_seqs, num_tokens)
        if add is not None:
            add("value_loss", vl.detach())
            add("value_sq_err", ((values.detach() - sub.returns) ** 2 * sub.response_mask).sum())
        return vl

    def _critic_stats(self, batch: RolloutBatch, sums: dict[str, float], tokens: float) -> dict[str, float]:
        n_updates = sum(len(epoch) for epoch in batch.plan)
        return {
            "critic/value_loss": sums["value_loss"] / self.cfg.train.ppo_epochs,
            "critic/value_mse": sums["value_sq_err"] / max(tokens, 1.0),
            "critic/grad_norm": sums["critic_grad_norm"] / n_updates,
        }

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "entropy_coef": self.entropy_coef,
                 "last_entropy": self.last_entropy, "version": self.version}
        if self.critic is not None:  # the reference is not saved: it is the starting model, rebuilt
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "shards" in state:
            raise ConfigError(f"resume: the checkpoint {state['shards']} holds the shards of "
                              f"cluster.trainer_workers={state['trainer_workers']}, not a one-process trainer")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.entropy_coef, self.last_entropy, self.version = state["entropy_coef"], state["last_entropy"], state["version"]
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def save_shards(self, folder: str | Path) -> dict[str, Any]:
        raise NotImplementedError("a one-process worker is not sharded: state_dict() holds its whole state")
