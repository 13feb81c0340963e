"""FateZero, step 1: VE_AttentionCaptureConfig, which makes VE_DDIMInvert store the source attention maps
(docs/design.md §6) in a compact AttentionStore (kernels/fatezero.py)."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import ClassVar

import folder_paths
import torch
from comfy_api.latest import io

from ..kernels.fatezero import AttentionStore, attention_probs, captured_blocks, chunk_slice
from .shared.attention_slots import CAPTURE, AddsToOutput, SlotPatch, install
from .shared.inputs import TRAINING_FREE_FAMILIES, require_unet
from .shared.unet_call import cond_chunks
from .shared.socket_types import ATTENTION_CAPTURE, CaptureType, VideoEditNode
from .shared.windowing import clip_rows
from .shared.schema_fields import FATEZERO_ALIASES, search_aliases


class CapturePatch(SlotPatch):
    """A replace patch used during inversion: records what ``record`` keeps of the conditional pass, then computes
    the block's attention with the patch that was in the slot (or ComfyUI's kernel), so capturing changes no bit
    of the inversion."""

    role = CAPTURE

    def __init__(self, store: AttentionStore, key: tuple, inner=None):
        self.store, self.key, self.inner = store, key, inner

    def record(self, level: int, q, k, heads: int, frames):
        raise NotImplementedError

    def __call__(self, q, k, v, extra_options):
        chunks, frames = cond_chunks(extra_options, q.shape[0])
        level = self.store.stored_level(float(extra_options["sigmas"].max()))
        if chunks and level is not None:
            part = chunk_slice(chunks[0], frames)
            self.record(level, q[part], k[part], extra_options["n_heads"], clip_rows(extra_options, frames))
        return self.attention(q, k, v, extra_options)


class SelfAttentionCapture(CapturePatch):
    """attn1: the conditional queries and keys (the map is rebuilt from them when editing)."""

    def record(self, level, q, k, heads, frames):
        self.store.put_self(self.key, level, q, k, frames)


class CrossAttentionCapture(CapturePatch, AddsToOutput):
    """attn2: the conditional post-softmax maps (of the text keys; what a pack ``add``s comes on top)."""

    def __call__(self, q, k, v, extra_options):
        return self.with_added(super().__call__(q, k, v, extra_options), q, k, v, extra_options)

    def record(self, level, q, k, heads, frames):
        self.store.put_cross(self.key, level, attention_probs(q, k, heads), frames)


def with_attention_capture(model, store: AttentionStore):
    """A clone of ``model`` that fills ``store`` while it inverts; other blocks and the temporal layers untouched."""
    clone = model.clone()
    for key in store.blocks:
        install(clone, "attn1", key, SelfAttentionCapture(store, key))
        install(clone, "attn2", key, CrossAttentionCapture(store, key))
    return clone


def store_limit_bytes(memory_limit_gb: float, directory: str) -> float:
    """The most the store may take in ``directory``: ``memory_limit_gb`` (0: 80 %) of its free disk space, never
    more than that space, whatever the input says."""
    free = shutil.disk_usage(directory).free
    return min(memory_limit_gb * 2**30, free) if memory_limit_gb > 0 else 0.8 * free


@dataclass(frozen=True)
class AttentionCapture:
    """Which blocks VE_DDIMInvert stores attention for, and how much disk the store may take in ComfyUI's temp
    folder (0: 80 % of its free space; never more than that space)."""

    max_query_tokens: int = 1024
    memory_limit_gb: float = 0.0
    key: ClassVar[str] = ATTENTION_CAPTURE

    def allocate(self, model, samples: torch.Tensor, conditioning, sigmas: torch.Tensor) -> AttentionStore:
        """The empty store for this inversion, after checking its size against the limit."""
        unet = require_unet(model, TRAINING_FREE_FAMILIES)
        frames, _, height, width = samples.shape
        blocks = captured_blocks(unet, height, width, self.max_query_tokens)
        if not blocks:
            raise ValueError(f"attention_capture: no block has at most {self.max_query_tokens} query tokens at "
                             f"{height}x{width} latents; raise max_query_tokens.")
        context = conditioning[0][0].shape[1]
        need = AttentionStore.expected_bytes(blocks, len(sigmas) - 1, frames, context)
        directory = folder_paths.get_temp_directory()
        os.makedirs(directory, exist_ok=True)
        limit = store_limit_bytes(self.memory_limit_gb, directory)
        if need > limit:
            raise MemoryError(
                f"attention_capture: the maps need {need / 2**30:.2f} GiB ({need / (len(sigmas) - 1) / 2**20:.1f} MiB "
                f"per step x {len(sigmas) - 1} steps, {frames} frames) but {limit / 2**30:.2f} GiB are allowed. Lower "
                "steps, the number of frames or the resolution, or max_query_tokens on VE Attention Capture Config "
                f"(or raise its memory_limit_gb, or free disk space in ComfyUI's temp folder {directory}; the limit is "
                "never more than the free space there).")
        return AttentionStore(blocks, sigmas, frames, context, directory)

    def recording_model(self, model, samples: torch.Tensor, conditioning, sigmas: torch.Tensor):
        """(the model that records while VE_DDIMInvert inverts, the store it fills): the InversionCapture protocol."""
        store = self.allocate(model, samples, conditioning, sigmas)
        logging.info("VE_DDIMInvert: storing attention maps, %s", store.describe())
        return with_attention_capture(model, store), store


class AttentionCaptureConfig(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_AttentionCaptureConfig",
            display_name="VE Attention Capture Config",
            category="video_edit/fatezero",
            **search_aliases(FATEZERO_ALIASES, ("attention store", "capture")),
            description=(
                "Connect to VE DDIM Invert's attention_capture to store, at every inversion step, the source "
                "self- and cross-attention of the blocks with at most max_query_tokens tokens (1024: the 32x32, 16x16 "
                "and 8x8 blocks at 512x512), compactly (fp16), in an unnamed file in ComfyUI's temp folder that is "
                "read back a step at a time, so RAM does not grow with the clip. The size is computed before the "
                "run."),
            inputs=[
                io.Int.Input("max_query_tokens", default=1024, min=1, max=1 << 20,
                             tooltip="Capture blocks whose token grid h*w is at most this (FateZero: 32*32)."),
                io.Float.Input("memory_limit_gb", default=0.0, min=0.0, max=4096.0, step=0.5,
                               tooltip="Refuse to start if the maps need more (on disk, in ComfyUI's temp "
                                       "folder); 0 = 80% of the free space there. Never more than the free space."),
            ],
            outputs=[CaptureType.Output(display_name="attention_capture",
                                        tooltip="Connect to VE DDIM Invert's attention_capture.")],
        )

    @classmethod
    def execute(cls, max_query_tokens, memory_limit_gb) -> io.NodeOutput:
        return io.NodeOutput(AttentionCapture(max_query_tokens, memory_limit_gb))


NODES = [AttentionCaptureConfig]
