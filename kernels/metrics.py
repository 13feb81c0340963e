"""Edit-quality metrics (pure torch): the warp error of an edit along the source clip's optical flow, and the
consistency of consecutive frame embeddings.

Flows are ``(N, 2, H, W)`` in pixels, ``(dx, dy)``, such that frame t at pixel p shows what frame t+1 shows at
``p + flow(p)``. Frames are ``(N, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_at(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``images`` sampled (bilinear) at ``p + flow(p)`` for every pixel p; outside the frame: the border."""
    _, _, height, width = flow.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype), torch.arange(width, dtype=flow.dtype),
                            indexing="ij")
    grid = torch.stack([(xs + flow[:, 0]) / max(width - 1, 1), (ys + flow[:, 1]) / max(height - 1, 1)], -1)
    return F.grid_sample(images, grid * 2 - 1, mode="bilinear", padding_mode="border", align_corners=True)


def unoccluded(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` mask of the pixels the backward flow brings back and that land inside the next frame: the
    forward-backward check of Sundaram et al. (2010), ``|f + b(p + f)|² < 0.01 (|f|² + |b(p + f)|²) + 0.5``."""
    returned = sample_at(backward, forward)
    mismatch = (forward + returned).pow(2).sum(1)
    consistent = mismatch < 0.01 * (forward.pow(2).sum(1) + returned.pow(2).sum(1)) + 0.5
    _, _, height, width = forward.shape
    xs = torch.arange(width, dtype=forward.dtype) + forward[:, 0]
    ys = torch.arange(height, dtype=forward.dtype)[:, None] + forward[:, 1]
    inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    return consistent & inside


def warp_errors(edited: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Per consecutive pair (t, t+1) of the edit: the mean over unoccluded pixels of the squared difference
    (channel mean) between frame t and frame t+1 warped back along the source's flow (Lai et al. 2018)."""
    warped = sample_at(edited[1:], forward)
    mask = unoccluded(forward, backward).to(edited.dtype)
    squared = (edited[:-1] - warped).pow(2).mean(1)
    return (squared * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)


def consecutive_cosine(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each frame's embedding ``(N, D)`` with the next frame's: ``(N - 1,)``."""
    return F.cosine_similarity(embeddings[:-1].float(), embeddings[1:].float(), dim=-1)
