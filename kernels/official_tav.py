"""The official Tune-A-Video checkpoint layout (a diffusers ``UNet3DConditionModel`` state dict, as showlab/Tune-A-Video
and FateZero publish ``unet/diffusion_pytorch_model.*``) split into what tuning changed and what it kept.

The official inflated UNet's weights are named as diffusers' ``UNet2DConditionModel`` names them (its inflated
convolutions subclass ``nn.Conv2d``), plus ``<block>.attn_temp.*`` and ``<block>.norm_temp.*`` after every
transformer block. The official recipe trains ``attn1.to_q``, ``attn2.to_q`` and ``attn_temp`` (``train_tuneavideo.py``
``trainable_modules``); ``norm_temp`` keeps its initialisation but is part of the checkpoint. Everything else is the
base model it was tuned from.

Pure mapping: the diffusers -> LDM key map comes from the caller (ComfyUI's ``unet_to_diffusers``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

TUNED_QUERIES = ("attn1.to_q.weight", "attn2.to_q.weight")
_TEMPORAL_KEY = re.compile(r"^(.*\.transformer_blocks\.\d+)\.((?:attn_temp|norm_temp)\..+)$")
_BLOCK_OF_QUERY = re.compile(r"^(.*\.transformer_blocks\.\d+)\.attn1\.to_q\.weight$")
# fp16 / bf16 copies of the same weights differ by about 2e-4 / 1.7e-3 of the tensor's norm (their rounding); a
# fine-tune of the base (SD 1.4 vs 1.5) is expected to differ by more (not measured on the real weights).
SAME_WEIGHT_TOLERANCE = 5e-3


def is_official_unet3d(keys) -> bool:
    """Whether ``keys`` look like an official Tune-A-Video UNet: a diffusers UNet with temporal attention layers."""
    keys = set(keys)
    return "conv_in.weight" in keys and any(_TEMPORAL_KEY.match(key) for key in keys)


@dataclass
class OfficialUNet:
    """An official checkpoint in LDM names: ``queries`` and ``kept`` by LDM weight key (``input_blocks.1.1...``),
    ``temporal`` by LDM block path plus ``norm_temp.weight`` etc. (the pack's temporal layer keys); ``unknown``: the
    checkpoint's keys that have no place in this UNet layout."""

    queries: dict[str, torch.Tensor] = field(default_factory=dict)
    temporal: dict[str, torch.Tensor] = field(default_factory=dict)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def split_official_unet(state: dict[str, torch.Tensor], diffusers_to_ldm: dict[str, str]) -> OfficialUNet:
    """``state`` (diffusers names) sorted into tuned queries, temporal layers and kept weights, in LDM names."""
    block_paths = {match[1]: _BLOCK_OF_QUERY.match(ldm)[1] for key, ldm in diffusers_to_ldm.items()
                   if (match := _BLOCK_OF_QUERY.match(key))}
    split = OfficialUNet()
    for key, tensor in state.items():
        temporal = _TEMPORAL_KEY.match(key)
        if temporal and temporal[1] in block_paths:
            split.temporal[f"{block_paths[temporal[1]]}.{temporal[2]}"] = tensor
        elif key in diffusers_to_ldm:
            target = split.queries if key.endswith(TUNED_QUERIES) else split.kept
            target[diffusers_to_ldm[key]] = tensor
        else:
            split.unknown.append(key)
    return split


def weight_difference(weight: torch.Tensor, base: torch.Tensor) -> float:
    """``|weight - base| / |base|`` in fp32: how far a checkpoint's weight is from the base's (same shape)."""
    base = base.detach().to(weight.device, torch.float32)
    return ((weight.float() - base).norm() / base.norm().clamp_min(1e-12)).item()
