"""The authors' training loop, restated in PyTorch for a trajectory-parity check.

What amimulamim/Mars-LS-Segmentation's ``src/train.py`` and ``src/utils.py`` do per step (the
facts of issue 11), on the PyTorch twin (experiments/torch_twin.py): torch AdamW; the learning
rate factor max(step / warmup, 0.01) in the warm-up, then 0.05 + 0.95 * cosine, through
LambdaLR stepped after every update; their EMA of the trainable parameters only, with decay
min(decay, 1 - 1/(n+1)) over the warm-up's updates; their loss, 1/2 BCE(pos_weight) +
1/2 (1 - mean over tiles of the per-tile Dice); BatchNorm in train mode. No AMP and no
augmentation: the batches are given, so that jaxswin's train_step can be fed the same ones
(tests/test_authors_loop.py).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


def lr_factor(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The LambdaLR factor of update `step` (their utils.make_lr_lambda)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return max(step / max(warmup_steps, 1), 0.01)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class EMA:
    """Their EMA: a shadow of the trainable parameters (no BatchNorm statistics)."""

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int):
        self.decay, self.warmup_steps, self.updates = decay, warmup_steps, 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()
                       if p.requires_grad}

    def current_decay(self) -> float:
        if self.warmup_steps > 0 and self.updates < self.warmup_steps:
            return min(self.decay, 1.0 - 1.0 / (self.updates + 1))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.shadow[name] = (1.0 - decay) * param.detach() + decay * self.shadow[name]

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the shadow parameters: the raw running statistics stay,
        as their apply_shadow leaves the buffers alone."""
        return {**model.state_dict(), **self.shadow}


def loss_fn(logits: torch.Tensor, mask: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Their WeightedBCEDiceLoss on (B, 1, H, W) logits and mask."""
    bce = F.binary_cross_entropy_with_logits(
        logits, mask, pos_weight=torch.tensor([pos_weight], dtype=logits.dtype)
    )
    probs = torch.sigmoid(logits)
    dice = 1 - (2 * (probs * mask).sum(dim=(2, 3)) / ((probs + mask).sum(dim=(2, 3)) + 1e-7)).mean()
    return 0.5 * bce + 0.5 * dice


def train(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    pos_weight: float,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    ema_decay: float,
) -> tuple[list[float], EMA]:
    """Their train_one_fold's inner loop over `batches` of (rgb, aux, mask) NCHW tensors;
    returns the loss of every step and the EMA (the model is trained in place)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(warmup_steps, total_steps))
    ema = EMA(model, ema_decay, warmup_steps)
    model.train()
    losses = []
    for rgb, aux, mask in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(rgb, aux), mask, pos_weight)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.update(model)
        losses.append(loss.item())
    return losses, ema
