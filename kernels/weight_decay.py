"""AdamW's decoupled weight decay for a weight that is tuned as ``base + delta`` (Tune-A-Video's query
projections): the official code decays the whole tuned weight, so the decay is written on the delta."""

from __future__ import annotations

import torch


@torch.no_grad()
def decay_delta_(delta: torch.Tensor, base: torch.Tensor, learning_rate: float, weight_decay: float) -> torch.Tensor:
    """In place: ``W <- W - lr * wd * W`` for ``W = base + delta``, applied to ``delta`` (``base`` is frozen)."""
    rate = learning_rate * weight_decay
    return delta.mul_(1 - rate).sub_(base.to(delta.device), alpha=rate)  # = delta - rate * (base + delta), in place
