"""The value model of PPO-style methods (ORZ, VC-PPO, VAPO): the policy's transformer with a
scalar head, predicting at each position the return of the state before the next token."""

from __future__ import annotations

import copy

import torch
from torch import nn

from r1lab.models import model_device
from r1lab.train.attention import trainer_attention


class ValueModel(nn.Module):
    """values[:, t] estimates the return after the prefix input_ids[:, :t+1], aligned with the
    trainer's log-prob layout [B, L-1] (the state in which token t+1 is chosen)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.backbone = copy.deepcopy(policy.base_model)  # the transformer without the LM head
        hidden = policy.config.hidden_size
        self.head = nn.Linear(hidden, 1, device=model_device(policy))
        nn.init.zeros_(self.head.weight)  # start at V = 0: no arbitrary initial baseline
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = self.head.weight.device  # the batch may be on the CPU and the model on a GPU
        # float32 even inside the trainer's bf16 autocast: the value head's targets are small differences
        with trainer_attention(), torch.autocast(device.type, enabled=False):
            hidden = self.backbone(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                   use_cache=False).last_hidden_state
        return self.head(hidden[:, :-1].float()).squeeze(-1).to(input_ids.device)
