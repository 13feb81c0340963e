"""MotionDirector's LoRA maths (pure torch): adapters on existing Linears, their file layout, the debiased loss.

Official recipe (showlab/MotionDirector, cloneofsimo's ``LoraInjectedLinear``):
``y = W x + b + scale · dropout(up(down(x)))``, ``down: in→r`` initialised N(0, (1/r)²), ``up: r→out`` zero,
both without bias, no alpha/rank division (ΔW = scale · up @ down), rank clamped to min(in, out).

File layout (ComfyUI's standard LoRA keys): ``<prefix><module>.lora_up.weight`` ``(out, r)``,
``<prefix><module>.lora_down.weight`` ``(r, in)`` and ``<prefix><module>.alpha`` = r, so ComfyUI's alpha/rank
factor is exactly 1. Several spatial sets (one per training video) share a file under ``video<k>.`` prefixes.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from .unet_layout import iter_transformer_blocks

# Linears of a spatial transformer block that get a spatial LoRA: self-attention and feed-forward, not attn2.
SPATIAL_LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")
SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".alpha")


def spatial_targets(unet: nn.Module) -> dict[str, nn.Linear]:
    """Module path in the diffusion model -> Linear, for every spatial-LoRA target of an SD1.x UNet."""
    return {f"{path}.{name}": block.get_submodule(name)
            for _, path, _, block in iter_transformer_blocks(unet) for name in SPATIAL_LINEARS}


def linear_targets(module: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear under ``module`` (the temporal layers: each gets a temporal LoRA)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


class LoRA(nn.Module):
    """``x -> up(down(x))``; the caller adds ``scale · dropout(...)`` to the wrapped Linear's output."""

    def __init__(self, in_features: int, out_features: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        rank = min(rank, in_features, out_features)
        self.down = nn.Parameter(torch.randn(rank, in_features, generator=generator) / rank)
        self.up = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down), self.up)


class LoRASet(nn.Module):
    """One LoRA per target Linear, added to that Linear's output by a forward hook while attached.

    ``scale`` and ``dropout`` are read at every call, so a training loop can switch the whole set off (scale 0)
    between passes. Dropout is active only in training mode.
    """

    def __init__(self, targets: dict[str, nn.Linear], rank: int, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.paths = list(targets)
        self.loras = nn.ModuleList([LoRA(m.in_features, m.out_features, rank, generator) for m in targets.values()])
        self.scale = 1.0
        self.dropout = dropout
        self._handles = []

    def _hook(self, lora: LoRA):
        def hook(module, args, output):
            if self.scale == 0:
                return output
            delta = F.dropout(lora(args[0].to(lora.up.dtype)), self.dropout, self.training)
            return output + (self.scale * delta).to(output.dtype)
        return hook

    def attach(self, targets: dict[str, nn.Module]):
        """Hook every LoRA onto the Linear at its path in ``targets`` (the live modules)."""
        self.detach()
        self._handles = [targets[path].register_forward_hook(self._hook(lora)) for path, lora in zip(self.paths, self.loras)]

    def detach(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def file_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The set in the file layout (fp32, CPU)."""
        return lora_file_tensors({path: (lora.up, lora.down) for path, lora in zip(self.paths, self.loras)}, prefix)


def lora_file_tensors(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], prefix: str = "") -> dict[str, torch.Tensor]:
    """``{module: (up, down)}`` -> file keys, with alpha = rank."""
    tensors = {}
    for path, (up, down) in pairs.items():
        tensors[f"{prefix}{path}.lora_up.weight"] = up.detach().float().cpu().clone()
        tensors[f"{prefix}{path}.lora_down.weight"] = down.detach().float().cpu().clone()
        tensors[f"{prefix}{path}.alpha"] = torch.tensor(float(down.shape[0]))
    return tensors


SPATIAL_SET_KEY = re.compile(r"video(\d+)\.(.+)")  # a per-video spatial set's keys: video<k>.<LoRA key>


def join_spatial_sets(sets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One file's tensors for the spatial LoRA sets: a single set as standard LoRA keys, several (official: one per
    training video) under ``video<k>.`` in training-video order."""
    if len(sets) == 1:
        return dict(sets[0])
    return {f"video{k}.{key}": value for k, tensors in enumerate(sets) for key, value in tensors.items()}


def split_spatial_sets(tensors: dict[str, torch.Tensor], what: str) -> list[dict[str, torch.Tensor]]:
    """The spatial sets in ``tensors``, in training-video order (inverse of ``join_spatial_sets``)."""
    matches = {key: SPATIAL_SET_KEY.fullmatch(key) for key in tensors}
    if not any(matches.values()):
        return [tensors]
    if not all(matches.values()):
        raise ValueError(f"{what}: it mixes per-video spatial sets (video<k>. keys) with plain LoRA keys, "
                         "so it is not one file of spatial sets.")
    sets: dict[int, dict[str, torch.Tensor]] = {}
    for key, match in matches.items():
        sets.setdefault(int(match[1]), {})[match[2]] = tensors[key]
    if sorted(sets) != list(range(len(sets))):
        raise ValueError(f"{what}: its per-video sets are numbered {sorted(sets)}, not 0 to {len(sets) - 1}, so "
                         "it is not one file of spatial sets.")
    return [sets[k] for k in range(len(sets))]


def check_lora_tensors(tensors: dict[str, torch.Tensor], targets: dict[str, tuple[int, int]], what: str) -> int:
    """Refuse LoRA tensors that do not cover exactly ``targets`` (module key -> (out, in)) with matching shapes.

    Returns the rank. Raises ValueError starting with ``what`` and saying what does not fit.
    """
    modules: dict[str, set[str]] = {}
    for key in tensors:
        suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"{what}: {key!r} is not a LoRA key (expected <module>.lora_up.weight, "
                             ".lora_down.weight or .alpha).")
        modules.setdefault(key[:-len(suffix)], set()).add(suffix)
    unknown = sorted(set(modules) - set(targets))
    missing = sorted(set(targets) - set(modules))
    if unknown or missing:
        example = f"{len(unknown)} of its modules are not targets here, e.g. {unknown[0]}" if unknown else \
            f"it lacks {len(missing)} target modules, e.g. {missing[0]}"
        raise ValueError(f"{what}: it does not fit this model ({example}); it was made for another model or is the "
                         "other kind of motion LoRA (spatial vs temporal). Use it with the model it was trained on.")
    ranks = set()
    for module, (out_features, in_features) in targets.items():
        if not {".lora_up.weight", ".lora_down.weight"} <= modules[module]:
            raise ValueError(f"{what}: {module} has no lora_up/lora_down pair.")
        up, down = tensors[module + ".lora_up.weight"], tensors[module + ".lora_down.weight"]
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0] or \
                (up.shape[0], down.shape[1]) != (out_features, in_features):
            raise ValueError(f"{what}: {module} has up {tuple(up.shape)} and down {tuple(down.shape)}, the model's "
                             f"Linear maps {in_features} -> {out_features}; it was made for another model.")
        ranks.add(down.shape[0])
    return max(ranks)


def debiased_temporal_loss(pred: torch.Tensor, eps: torch.Tensor, anchor: int) -> torch.Tensor:
    """MotionDirector's temporal loss on ``(frames, ...)`` tensors: ε-MSE plus the appearance-debiased MSE
    ``MSE(√2·pred − pred[k], √2·ε − ε[k])`` against anchor frame ``k`` (β = 1, α = √(β² + 1))."""
    alpha = math.sqrt(2.0)
    anchored_pred = alpha * pred - pred[anchor:anchor + 1]
    anchored_eps = alpha * eps - eps[anchor:anchor + 1]
    return F.mse_loss(pred, eps) + F.mse_loss(anchored_pred, anchored_eps)


def noise_prior(inverted: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """MotionDirector's initial noise: ``√p · inverted + √(1 − p) · noise`` (both unit-variance, VP space)."""
    return math.sqrt(p) * inverted + math.sqrt(1.0 - p) * noise
