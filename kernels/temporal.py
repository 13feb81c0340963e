"""Temporal layers that inflate an image UNet for video (Tune-A-Video).

``TemporalAttention`` is Tune-A-Video's ``norm_temp`` + ``attn_temp``: pre-LayerNorm self-attention over the
frame axis at each fixed spatial position, no positional encoding, residual; by default no mask (Tune-A-Video),
optionally Make-Your-Video's causal mask (``TemporalMask``). Its output projection is zero-initialised, weight
*and* bias (the official code leaves the bias random), so an untuned inflated UNet computes exactly what the
image UNet computes.

The layers are built from ``ops``, a namespace with ``Linear`` and ``LayerNorm`` classes: ``torch.nn`` by default;
the nodes pass ComfyUI's ``comfy.ops`` classes, which cast the weights to the input's dtype and device when ComfyUI
asks them to (half-precision compute, low-VRAM partial loading). Those skip torch's initialisation (ComfyUI loads
every weight); ``initialised`` restores it, so any ``ops`` give the same layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


TEMPORAL_MASKS = ("none", "causal")


@dataclass(frozen=True)
class TemporalMask:
    """Which frames a frame's temporal attention sees. ``none`` (Tune-A-Video): all, or with ``window`` R those
    at most R frames away; ``causal`` (Make-Your-Video): itself and earlier frames, with R the R frames before it
    (official: 15, a 16-frame window). ``window`` 0 = unlimited."""

    mode: str = "none"
    window: int = 0

    def __post_init__(self):
        if self.mode not in TEMPORAL_MASKS:
            raise ValueError(f"temporal_mask: {self.mode!r} is not one of {', '.join(TEMPORAL_MASKS)}.")
        if self.window < 0:
            raise ValueError(f"temporal_window: {self.window} frames; use 0 (unlimited) or more.")

    def allowed(self, frames: int, device=None) -> torch.Tensor | None:
        """``(frames, frames)`` bool, ``[i, j]`` = frame i attends to frame j; None when every pair is allowed."""
        if self.mode == "none" and not self.window:
            return None
        i = torch.arange(frames, device=device)[:, None]
        j = torch.arange(frames, device=device)[None, :]
        allowed = j <= i if self.mode == "causal" else torch.ones(frames, frames, dtype=torch.bool, device=device)
        if self.window:
            allowed = allowed & ((i - j).abs() <= self.window)
        return allowed


def initialised(layer: nn.Module) -> nn.Module:
    """``layer`` with torch's default initialisation, also where its class (a ``comfy.ops`` one) skips it. A plain
    torch layer already has it and is returned as it is, so the random stream is the same for any ``ops``."""
    torch_class = next(c for c in type(layer).__mro__ if c.__module__.startswith("torch.nn."))
    if type(layer) is not torch_class:
        torch_class.reset_parameters(layer)
    return layer


class TemporalAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mask: TemporalMask = TemporalMask(), ops=nn):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.mask = mask
        self.norm_temp = initialised(ops.LayerNorm(dim))
        self.attn_temp = nn.Module()
        self.attn_temp.to_q = initialised(ops.Linear(dim, inner, bias=False))
        self.attn_temp.to_k = initialised(ops.Linear(dim, inner, bias=False))
        self.attn_temp.to_v = initialised(ops.Linear(dim, inner, bias=False))
        self.attn_temp.to_out = nn.ModuleList([initialised(ops.Linear(inner, dim))])
        nn.init.zeros_(self.attn_temp.to_out[0].weight)
        nn.init.zeros_(self.attn_temp.to_out[0].bias)

    def forward(self, x: torch.Tensor, chunks: int) -> torch.Tensor:
        """``x``: ``((c f), tokens, dim)`` -> same shape, with attention over f at each token position."""
        attn = self.attn_temp
        h = rearrange(self.norm_temp(x), "(c f) n d -> (c n) f d", c=chunks)
        q, k, v = (rearrange(proj(h), "b f (h d) -> b h f d", h=self.heads) for proj in (attn.to_q, attn.to_k, attn.to_v))
        allowed = self.mask.allowed(q.shape[2], q.device)
        out = rearrange(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), "b h f d -> b f (h d)")
        out = rearrange(attn.to_out[0](out), "(c n) f d -> (c f) n d", c=chunks)
        return x + out


def frame_spanning_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                              eps: float, chunks: int) -> torch.Tensor:
    """GroupNorm whose statistics span all frames of a clip, as the official inflated ResNets compute it.

    ``x``: ``((c f), ch, h, w)``. Tune-A-Video applies ``nn.GroupNorm`` to the 5-D ``b ch f h w`` tensor, so
    each group is normalised over (ch/G, f, h, w). Stacking the frames along height gives the same statistics.
    """
    frames = x.shape[0] // chunks
    stacked = rearrange(x, "(c f) ch h w -> c ch (f h) w", c=chunks)
    out = F.group_norm(stacked, num_groups, weight, bias, eps)
    return rearrange(out, "c ch (f h) w -> (c f) ch h w", f=frames)


class TemporalLayers(nn.Module):
    """One ``TemporalAttention`` per transformer block, stored under that block's own module path, so the
    state-dict keys read like the official ones: ``input_blocks.1.1.transformer_blocks.0.attn_temp.to_q.weight``.
    """

    def __init__(self, specs: dict[str, tuple[int, int, int]], mask: TemporalMask = TemporalMask(), ops=nn):
        """``specs``: block path -> (dim, heads, dim_head); ``mask``: every layer's temporal mask; ``ops``: the
        layer classes (module docstring)."""
        super().__init__()
        self.paths = list(specs)
        self.mask = mask
        for path, (dim, heads, dim_head) in specs.items():
            parent = self
            *parents, leaf = path.split(".")
            for name in parents:
                if not hasattr(parent, name):
                    parent.add_module(name, nn.Module())
                parent = getattr(parent, name)
            parent.add_module(leaf, TemporalAttention(dim, heads, dim_head, mask, ops))

    def layer(self, path: str) -> TemporalAttention:
        return self.get_submodule(path)

    def tunable_parameters(self) -> list[nn.Parameter]:
        """Tune-A-Video's trainable part: every ``attn_temp`` parameter; ``norm_temp`` stays frozen."""
        return [p for name, p in self.named_parameters() if ".attn_temp." in name]
