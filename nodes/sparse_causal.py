"""VE_SparseCausalAttention: cross-frame self-attention on any SD1.x MODEL (Tune-A-Video, FateZero)."""

from __future__ import annotations

from comfy_api.latest import io

import torch

from ..kernels.attention import (CROSS_FRAME_MODES, QUERY_TOKENS_PER_CALL, attention_to_rows, bank_rows,
                                 cross_frame_attention)
from ..kernels.unet_layout import iter_transformer_blocks
from ..kernels.windows import anchor_frames, window_references
from .shared.animatediff import fit_motion_module_per_call
from .shared.attention_slots import CROSS_FRAME, SlotPatch, guard_slots, install, remove
from .shared.inputs import TRAINING_FREE_FAMILIES, require_unet
from .shared.patcher import check_video_inputs_when_sampling
from .shared.unet_call import BORROWED_OPTION, PER_FRAME_OPTION
from .shared.socket_types import VideoEditNode
from .shared.schema_fields import TUNE_A_VIDEO_ALIASES, FATEZERO_ALIASES, search_aliases


class CrossFrameAttentionPatch(SlotPatch):
    """attn1 replace patch: frame i's queries attend to the keys/values of its reference frames.

    The frames of one clip are the batch divided by the number of cond/uncond chunks ComfyUI runs together.
    Under VE Context Windows the batch is a window: references are the clip's own, the anchor frame borrowed
    from the window that computed it (see ``windowed``); under other context windows they are the window's.
    Outside the
    ``[sigma_end, sigma_start]`` range it is plain per-frame self-attention. The attention itself is that of the
    patch another pack put in the slot before (``inner``), if any, else ComfyUI's kernel.
    """

    role = CROSS_FRAME

    def __init__(self, mode: str, sigma_start: float, sigma_end: float, inner=None):
        self.mode = mode
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.inner = inner

    def active(self, extra_options) -> bool:
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.max())
        return self.sigma_end <= sigma <= self.sigma_start

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        attention = self.attention_function(extra_options)
        if not self.active(extra_options) or extra_options.get(PER_FRAME_OPTION):
            return attention(q, k, v, heads)
        # Frames a few at a time through ComfyUI's kernel (bounded memory); another pack's patch sees the whole batch.
        per_call = QUERY_TOKENS_PER_CALL if self.inner is None else None
        window, borrowed = extra_options.get("context_window"), extra_options.get(BORROWED_OPTION)
        if window is not None and borrowed is not None and self.mode != "full":
            return self.windowed(q, k, v, extra_options, list(window.index_list), borrowed, attention, per_call)
        chunks = len(extra_options.get("cond_or_uncond") or [0])
        return cross_frame_attention(q, k, v, heads, chunks, self.mode, attention=attention,
                                     query_tokens_per_call=per_call)

    def anchor_frames(self, frames: int) -> list[int]:
        """The frames of a ``frames``-frame clip that every frame attends to (VE Context Windows runs them first)."""
        return anchor_frames(frames, self.mode)

    def windowed(self, q, k, v, extra_options, index: list[int], borrowed, attention, per_call):
        """Attention of window ``index``: a window holding an anchor keeps its keys/values for the step; the others
        append the kept ones to their own and attend by the clip's references (kernels/windows.py)."""
        flags = list(extra_options.get("cond_or_uncond") or [0])
        frames = q.shape[0] // len(flags)
        calls = borrowed.call_keys(extra_options, flags)
        lent = []
        for anchor in self.anchor_frames(borrowed.frames):
            if anchor in index:
                row = index.index(anchor)
                for chunk, call in enumerate(calls):
                    borrowed.keep(call, anchor, k[chunk * frames + row], v[chunk * frames + row])
            elif all(borrowed.get(call, anchor) is not None for call in calls):
                lent.append(anchor)
        rows = bank_rows(window_references(index, borrowed.frames, self.mode, lent), len(flags), len(lent))
        if lent:
            kept = [borrowed.get(call, anchor) for call in calls for anchor in lent]
            k = torch.cat([k, torch.stack([key for key, _ in kept]).to(k)])
            v = torch.cat([v, torch.stack([value for _, value in kept]).to(v)])
        return attention_to_rows(q, k, v, rows, extra_options["n_heads"], attention, per_call)


def with_cross_frame_attention(model, mode: str, start_percent: float = 0.0, end_percent: float = 1.0,
                               min_channels: int = 0):
    """A clone of ``model`` whose self-attention uses ``mode`` (see kernels.attention.reference_frames) in every
    block with at least ``min_channels`` channels; smaller blocks keep per-frame self-attention (FateZero's
    ``least_sc_channel``)."""
    if mode not in CROSS_FRAME_MODES:  # ComfyUI 0.3.75 does not check V3 combo values sent over its API
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(CROSS_FRAME_MODES)}; pick one of them.")
    unet = require_unet(model, TRAINING_FREE_FAMILIES)
    blocks = [(key, block.attn1.to_q.in_features) for key, _, _, block in iter_transformer_blocks(unet)]
    widest = max(channels for _, channels in blocks)
    if min_channels > widest:
        raise ValueError(f"min_channels: no block has {min_channels} channels (the widest has {widest}); use at most "
                         f"{widest}, or 0 for every block.")
    sampling = model.get_model_object("model_sampling")
    # percent_to_sigma(0) is a huge sentinel (999999999.9) and percent_to_sigma(1) is 0: both are inclusive bounds.
    window = sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent)
    clone = model.clone()
    for key, channels in blocks:
        if channels >= min_channels:
            install(clone, "attn1", key, CrossFrameAttentionPatch(mode, *window))
        else:
            remove(clone, "attn1", key, CROSS_FRAME)
    guard_slots(clone)
    fit_motion_module_per_call(clone)
    check_video_inputs_when_sampling(clone)
    return clone


class SparseCausalAttention(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_SparseCausalAttention",
            display_name="VE Sparse-Causal Attention",
            category="video_edit/tune_a_video",
            **search_aliases(TUNE_A_VIDEO_ALIASES, FATEZERO_ALIASES, ("cross-frame attention", "sparse causal")),
            description=(
                "Makes every self-attention layer look across frames so a batch of frames is denoised as one clip. "
                "sparse_causal (Tune-A-Video): frame i attends to frame 0 and frame i-1; first_frame / middle_frame: "
                "every frame attends to one anchor frame (middle_frame is FateZero's zero-shot setting); full: all "
                "frames (memory grows with frames squared). min_channels limits it to the wider blocks (FateZero "
                "zero-shot: 640). Works on any SD1.x model, inflated or not; the input MODEL is not changed."),
            inputs=[
                io.Model.Input("model", tooltip="Any SD1.x MODEL, inflated (VE Inflate UNet) or not."),
                io.Combo.Input("mode", options=list(CROSS_FRAME_MODES), default="sparse_causal",
                               tooltip="Which frames each frame attends to: sparse_causal (Tune-A-Video) frame 0 and "
                                       "the previous one; first_frame / middle_frame one anchor (FateZero zero-shot: "
                                       "middle_frame); full: all frames."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the schedule where cross-frame attention starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the schedule where it stops (plain per-frame attention after)."),
                io.Int.Input("min_channels", default=0, min=0, max=4096, step=64, optional=True,
                             tooltip="Only blocks with at least this many channels look across frames; narrower ones "
                                     "keep per-frame self-attention. FateZero's zero-shot setting: 640 "
                                     "(least_sc_channel). 0: every block (Tune-A-Video)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with cross-frame self-attention, for the "
                                                                  "sampler, VE DDIM Invert or VE One-Shot Tune.")],
        )

    @classmethod
    def execute(cls, model, mode, start_percent, end_percent, min_channels=0) -> io.NodeOutput:
        if start_percent > end_percent:
            raise ValueError(f"start_percent ({start_percent}) must not exceed end_percent ({end_percent}).")
        return io.NodeOutput(with_cross_frame_attention(model, mode, start_percent, end_percent, min_channels))


NODES = [SparseCausalAttention]
