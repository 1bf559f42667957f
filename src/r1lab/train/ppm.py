"""The process preference model (rStar-Math's PPM): the policy's transformer with a scalar head
(linear, then tanh, so a score lies in [-1, 1]) scoring a partial solution at its last token, and
its training on MCTS step pairs with the pairwise ranking loss (algos/mcts.ppm_pairwise_loss).

`score(prompts, partials)` is the interface every search uses: a prompt is the problem's text (the
chat template is applied here), a partial is the response written so far (`<think>` and the steps).
A PPM is a directory: `model/` (a Hugging Face causal LM directory holding the backbone), `head.pt`
and `scorer.json` (kind "rstar_ppm", what the head is), so `r1lab eval --search --prm DIR` loads it
as a step scorer like a PRIME run's PRM.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from r1lab.algos.mcts import ppm_pairwise_loss
from r1lab.errors import ModelError
from r1lab.models import PPM_KIND, SCORER_FILE, load_model, model_device, render_prompt, save_model
from r1lab.train.attention import trainer_attention
from r1lab.train.common import grad_norm_clip, make_optimizer

FORMAT = "r1lab-ppm/1"


class ProcessPreferenceModel(nn.Module):
    def __init__(self, lm: nn.Module, tokenizer, head: nn.Linear | None = None):
        super().__init__()
        self.lm = lm  # a causal LM: its transformer (lm.base_model) is the backbone, its LM head unused
        self.tokenizer = tokenizer
        hidden = lm.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1, device=model_device(lm))
            nn.init.zeros_(head.weight)  # every partial starts at score 0
            nn.init.zeros_(head.bias)
        self.head = head
        self.max_length = int(getattr(lm.config, "max_position_embeddings", 0) or 0)

    @classmethod
    def from_policy(cls, policy: nn.Module, tokenizer) -> "ProcessPreferenceModel":
        """A fresh PPM on a copy of `policy` (rStar-Math starts the PPM from the fine-tuned policy)."""
        return cls(copy.deepcopy(policy).float(), tokenizer)

    # -- scoring -------------------------------------------------------------------------------

    def encode(self, prompts: list[str], partials: list[str]) -> list[list[int]]:
        """Token ids of chat-templated prompt + partial; the oldest tokens are cut past the context."""
        if len(prompts) != len(partials):
            raise ValueError(f"PPM: {len(prompts)} prompts but {len(partials)} partial solutions")
        out = []
        for prompt, partial in zip(prompts, partials):
            rendered = render_prompt(self.tokenizer, prompt)
            tail = rendered.rstrip()
            if tail.endswith("<think>") and partial.startswith("<think>"):  # the template pre-filled it
                rendered = rendered[: rendered.rfind("<think>")]
            ids = self.tokenizer(rendered + partial, add_special_tokens=False)["input_ids"]
            if self.max_length and len(ids) > self.max_length:
                ids = ids[-self.max_length:]
            out.append(ids)
        return out

    def forward_ids(self, ids: list[list[int]]) -> torch.Tensor:
        """Scores [B] (in [-1, 1]) of token sequences: the head on the last token's hidden state."""
        device = self.head.weight.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        L = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), L), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), L), dtype=torch.long)
        for i, x in enumerate(ids):  # right padding: real tokens keep positions 0..n-1
            input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        last = torch.tensor([len(x) - 1 for x in ids], device=device)
        with trainer_attention(), torch.autocast(device.type, enabled=False):
            hidden = self.lm.base_model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                        use_cache=False).last_hidden_state
        h = hidden[torch.arange(len(ids), device=device), last].float()
        return torch.tanh(self.head(h).squeeze(-1))

    @torch.no_grad()
    def score(self, prompts: list[str], partials: list[str]) -> list[float]:
        """One score per (prompt, partial solution): higher = more likely to lead to a right answer."""
        if not prompts:
            return []
        was = self.training
        self.eval()
        try:
            ids = self.encode(prompts, partials)
            out: list[float] = []
            for b in range(0, len(ids), 32):
                out += self.forward_ids(ids[b:b + 32]).tolist()
            return out
        finally:
            self.train(was)

    # -- saving --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the PPM directory (beside, then renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_model(self.lm, self.tokenizer, tmp / "model")
        torch.save({k: v.detach().cpu() for k, v in self.head.state_dict().items()}, tmp / "head.pt")
        info = {"kind": PPM_KIND, "format": FORMAT, "head": "linear+tanh", "hidden_size": self.head.in_features}
        (tmp / SCORER_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "ProcessPreferenceModel":
        path = Path(path)
        meta_file = path / SCORER_FILE
        if not meta_file.is_file():
            raise ModelError(f"not a PPM directory (no {SCORER_FILE}): {path}")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except ValueError:
            raise ModelError(f"{meta_file}: not valid JSON") from None
        if meta.get("format") != FORMAT:
            raise ModelError(f"{meta_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
        lm, tok = load_model(path / "model", "float32")
        lm = lm.to(device)
        head = nn.Linear(lm.config.hidden_size, 1, device=device)
        try:
            head.load_state_dict(torch.load(path / "head.pt", map_location=device, weights_only=True))
        except (OSError, RuntimeError) as e:
            raise ModelError(f"{path / 'head.pt'}: cannot load the PPM head: {str(e).splitlines()[0]}") from None
        return cls(lm, tok, head).eval()


# --- training ----------------------------------------------------------------------------------------


def pairwise_accuracy(ppm: ProcessPreferenceModel, pairs: list[dict]) -> float:
    """Fraction of pairs whose positive scores strictly above its negative (NaN without pairs)."""
    if not pairs:
        return float("nan")
    pos = ppm.score([p["prompt"] for p in pairs], [p["pos"] for p in pairs])
    neg = ppm.score([p["prompt"] for p in pairs], [p["neg"] for p in pairs])
    return sum(a > b for a, b in zip(pos, neg)) / len(pairs)


def train_ppm(ppm: ProcessPreferenceModel, pairs: list[dict], lr: float, epochs: int, batch_size: int,
              grad_clip: float = 1.0, seed: int = 0, show_progress: bool = True) -> dict[str, float]:
    """AdamW on the mean pairwise loss over mini-batches of pairs; returns the last epoch's mean loss
    and the training pairs' accuracy before each step, averaged over that epoch."""
    if not pairs:
        return {"ppm/steps": 0}
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = make_optimizer(ppm, lr, 0.0)
    ppm.train()
    t0, step = time.time(), 0
    total = epochs * ((len(pairs) + batch_size - 1) // batch_size)
    bar = tqdm(total=total, desc="ppm", unit="step", disable=not show_progress, dynamic_ncols=True)
    loss_sum = acc_sum = 0.0
    for _ in range(epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        loss_sum = acc_sum = 0.0
        for b in range(0, len(order), batch_size):
            chunk = [pairs[i] for i in order[b:b + batch_size]]
            ids = ppm.encode([p["prompt"] for p in chunk] * 2, [p["pos"] for p in chunk] + [p["neg"] for p in chunk])
            scores = ppm.forward_ids(ids)
            pos, neg = scores[: len(chunk)], scores[len(chunk):]
            losses = ppm_pairwise_loss(pos, neg)
            opt.zero_grad(set_to_none=True)
            losses.mean().backward()
            grad_norm_clip(ppm, grad_clip)
            opt.step()
            step += 1
            loss_sum += float(losses.detach().sum())
            acc_sum += float((pos > neg).float().sum())
            bar.update(1)
            bar.set_postfix(loss=f"{float(losses.detach().mean()):.3f}")
    bar.close()
    ppm.eval()
    return {"ppm/loss": loss_sum / len(pairs), "ppm/train_accuracy": acc_sum / len(pairs), "ppm/steps": step,
            "ppm/seconds": time.time() - t0}
