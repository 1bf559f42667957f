"""PRIME's implicit process reward model, trained online beside the policy.

Two copies of the starting (SFT) policy: the PRM pi_phi, updated every step, and its frozen
reference pi_ref. A token's process reward is beta * log(pi_phi(y_t) / pi_ref(y_t)) and a sequence's
outcome logit the sum of them; each step the PRM takes a cross-entropy step on the rollouts'
verified outcomes (algos/prm.py holds the math). With `algo.prm_update: before` the PRM is updated
on the batch first and then scores it (the released PRIME recipe); with `after` it scores the batch
first, as the paper's algorithm box orders the two.

Log-probs are those of the models' own distributions (temperature 1), whatever the sampling
temperature: the PRM is a classifier of outcomes, not a sampler. Passes run over the micro-batches
of the batch's first epoch; the update takes one optimizer step per mini-batch of that epoch.

At the end of a run the PRM is saved as a directory that eval's search loads as a step scorer
(`ImplicitPRM.save`): a Hugging Face model directory (the PRM pi_phi and the tokenizer) holding
`scorer.json` ({"kind": "implicit_prm", "beta", "reference"}). The reference is the run's starting
model: the path of its directory when it was loaded from one, else a copy saved in `reference/`.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from r1lab.algos.prm import implicit_outcome_logits, implicit_process_rewards, outcome_hits, prm_ce_loss
from r1lab.config import RunConfig
from r1lab.models import PRM_KIND, SCORER_FILE, merged_weights, model_device, token_logprobs
from r1lab.train.attention import trainer_attention
from r1lab.train.batch import RolloutBatch, first_response_col
from r1lab.train.common import grad_norm_clip, make_optimizer




class ImplicitPRM:
    def __init__(self, cfg: RunConfig, model):
        """`model` is the starting policy, before any update: both copies are taken from it."""
        self.cfg = cfg
        self.beta = cfg.algo.prm_beta
        self.update_first = cfg.algo.prm_update == "before"
        self.model = copy.deepcopy(model).train()
        self.ref_model = copy.deepcopy(model).eval()
        self.ref_model.requires_grad_(False)
        self.optimizer = make_optimizer(self.model, cfg.algo.prm_lr, cfg.train.weight_decay)

    def _logprobs(self, model, b: RolloutBatch) -> torch.Tensor:
        enabled = self.cfg.train.bf16
        with torch.autocast(model_device(model).type, dtype=torch.bfloat16, enabled=enabled), trainer_attention():
            start = first_response_col(b.response_mask)
            return token_logprobs(model, b.input_ids, b.attention_mask, 1.0, start=start)[0]

    @torch.no_grad()
    def logprobs(self, batch: RolloutBatch, reference: bool = False) -> torch.Tensor:
        """[B, L-1] log-probs of the batch's tokens under the PRM (or its reference), no gradient."""
        model = self.ref_model if reference else self.model
        out = torch.zeros_like(batch.response_mask)
        for mini in batch.plan[0]:
            for idx in mini:
                v = self._logprobs(model, batch.rows(idx))
                out[idx, : v.shape[1]] = v
        return out * batch.response_mask

    def token_rewards(self, batch: RolloutBatch, ref_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L-1] implicit process rewards of the batch under the PRM as it is now."""
        ref = ref_logprobs if ref_logprobs is not None else self.logprobs(batch, reference=True)
        return implicit_process_rewards(self.logprobs(batch), ref, batch.response_mask, self.beta)

    def update(self, batch: RolloutBatch, labels: torch.Tensor,
               ref_logprobs: torch.Tensor | None = None) -> dict[str, float]:
        """One pass of cross-entropy steps on the outcome labels ([B] in [0, 1]): an optimizer step
        per mini-batch, each the mean over its sequences. The loss and accuracy are those of the
        forwards before each step."""
        ref = ref_logprobs if ref_logprobs is not None else self.logprobs(batch, reference=True)
        labels = labels.to(torch.float32)
        loss_sum = correct = grad_norm = 0.0
        self.model.train()
        for mini in batch.plan[0]:
            num_seqs = sum(len(idx) for idx in mini)
            self.optimizer.zero_grad(set_to_none=True)
            for idx in mini:
                sub = batch.rows(idx)
                lp = self._logprobs(self.model, sub)
                ref_sub = ref[idx, : lp.shape[1]]
                losses = prm_ce_loss(lp, ref_sub, sub.response_mask, labels[idx], self.beta)
                (losses.sum() / num_seqs).backward()
                loss_sum += float(losses.detach().sum())
                z = implicit_outcome_logits(lp.detach(), ref_sub, sub.response_mask, self.beta)
                correct += float(outcome_hits(z, labels[idx]).sum())
            grad_norm += grad_norm_clip(self.model, self.cfg.algo.prm_grad_clip)
            self.optimizer.step()
        return {"prm/loss": loss_sum / batch.size, "prm/accuracy": correct / batch.size,
                "prm/grad_norm": grad_norm / len(batch.plan[0])}

    def score_and_update(self, batch: RolloutBatch, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's process rewards [B, L-1] and the update's statistics, in the order
        `algo.prm_update` names."""
        ref = self.logprobs(batch, reference=True)
        if self.update_first:
            stats = self.update(batch, labels, ref)
            rewards = self.token_rewards(batch, ref)
        else:
            rewards = self.token_rewards(batch, ref)
            stats = self.update(batch, labels, ref)
        mask = batch.response_mask
        stats["prm/reward_mean"] = float(rewards.sum() / mask.sum().clamp(min=1))
        stats["prm/reward_seq_abs_mean"] = float(rewards.sum(dim=1).abs().mean())
        return rewards, stats

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, path: str | Path, tokenizer, reference: str | Path | None = None) -> Path:
        """Write the PRM as a scorer directory at `path` (built beside it and renamed when complete).
        `reference`: the directory the starting model was loaded from, recorded by its absolute path;
        None (a model built in memory) saves the frozen reference in `path/reference/`."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _save_plain(self.model, tmp)
        tokenizer.save_pretrained(tmp)
        if reference is None:
            _save_plain(self.ref_model, tmp / "reference")
            tokenizer.save_pretrained(tmp / "reference")
            ref = "reference"
        else:
            ref = str(Path(reference).resolve())
        info = {"kind": PRM_KIND, "beta": self.beta, "reference": ref}
        (tmp / SCORER_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        return path


def _save_plain(model, path: Path) -> None:
    """`model` as a plain Hugging Face directory: LoRA adapters (a run with train.lora) folded into
    the weights they adapt, so that loading needs no peft."""
    if not any(".lora_" in name for name, _ in model.named_parameters()):
        model.save_pretrained(path)
        return
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    missing, unexpected = plain.load_state_dict(dict(merged_weights(model)), strict=False)
    tied = {k for k in missing if getattr(model.config, "tie_word_embeddings", False) and k.endswith("lm_head.weight")}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"saving the PRM: merged weights do not fit the model ({unexpected or missing})")
    plain.save_pretrained(path)
