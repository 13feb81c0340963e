"""Where the transformer blocks and ResNet norms of an SD1.x UNet (LDM layout) live. Pure module walking."""

from __future__ import annotations

from typing import Iterator

from torch import nn

STAGES = (("input", "input_blocks"), ("middle", "middle_block"), ("output", "output_blocks"))
# Class names of the UNet's resampling layers (ComfyUI's openaimodel), matched by name so that kernels import no
# ComfyUI; tests/test_comfy_internals.py checks them against ComfyUI's UNet.
DOWNSAMPLE, UPSAMPLE = "Downsample", "Upsample"


def has_layer(block: nn.Module, class_name: str) -> bool:
    """Whether one of ``block``'s direct children is a ``class_name`` layer (DOWNSAMPLE, UPSAMPLE)."""
    return any(type(layer).__name__ == class_name for layer in block.children())


def _stage_blocks(unet: nn.Module, attr: str) -> list[tuple[int, nn.Module]]:
    stage = getattr(unet, attr)
    return [(0, stage)] if attr == "middle_block" else list(enumerate(stage))


def iter_transformer_blocks(unet: nn.Module) -> Iterator[tuple[tuple[str, int, int], str, nn.Module, nn.Module]]:
    """Yield ``(patch_key, path, spatial_transformer, block)`` for every BasicTransformerBlock.

    ``patch_key`` is ComfyUI's attention-patch key ``(stage, block_number, index)``; ``path`` is the block's
    module path in the diffusion model, e.g. ``input_blocks.1.1.transformer_blocks.0``. A block that an
    injected layer currently wraps (it keeps the original as ``.block``) is yielded as the original.
    """
    for stage, attr in STAGES:
        for number, sequential in _stage_blocks(unet, attr):
            for child_name, child in sequential.named_children():
                blocks = getattr(child, "transformer_blocks", None)
                if blocks is None:
                    continue
                prefix = f"{attr}.{child_name}" if attr == "middle_block" else f"{attr}.{number}.{child_name}"
                for index, block in enumerate(blocks):
                    yield (stage, number, index), f"{prefix}.transformer_blocks.{index}", child, getattr(block, "block", block)


def iter_resnet_norms(unet: nn.Module) -> Iterator[tuple[nn.Sequential, int]]:
    """Yield ``(container, index)`` for the GroupNorms that Tune-A-Video makes span frames:
    ``norm1``/``norm2`` of every ResNet (``in_layers[0]``, ``out_layers[0]``) and the final ``out[0]``."""
    for module in unet.modules():
        if hasattr(module, "in_layers") and hasattr(module, "out_layers"):
            yield module.in_layers, 0
            yield module.out_layers, 0
    yield unet.out, 0
