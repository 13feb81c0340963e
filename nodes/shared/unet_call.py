"""The state that travels with one UNet call, in one place: the context variables this pack sets around a call
and the ``transformer_options`` keys it reads or adds inside it (ComfyUI's own keys are named where they are read).
A reader sees here everything a patch can learn about the call it runs in besides its arguments."""

from __future__ import annotations

import contextvars

# transformer_options flag under which the inflated UNet runs as the image UNet (video_unet.bypass_temporal):
# cross-frame attention patches then treat every frame as its own image.
PER_FRAME_OPTION = "video_edit_per_frame"
# transformer_options key of the step's BorrowedFrames (windowing.py), read by the cross-frame attention patches.
BORROWED_OPTION = "video_edit_borrowed_frames"

# Set by the training loop (training.py) around its UNet calls: checkpoint every inflated transformer block.
GRADIENT_CHECKPOINTING = contextvars.ContextVar("video_edit_gradient_checkpointing", default=False)
# Set around every UNet call by the DIFFUSION_MODEL wrapper: how many videos (cond/uncond chunks) share the batch.
VIDEO_CHUNKS = contextvars.ContextVar("video_edit_video_chunks", default=1)
# Set by MotionDirector's spatial path and Dreamix's image steps: the image model's path, temporal layers skipped,
# norms and cross-frame attention per frame.
TEMPORAL_BYPASS = contextvars.ContextVar("video_edit_temporal_bypass", default=False)
# Set around a UNet call that trains with ControlNet residuals (see video_unet._copy_skip_input).
COPY_SKIPS = contextvars.ContextVar("video_edit_copy_skips", default=False)
# Set by TokenFlow's APPLY_MODEL wrapper around each UNet call: that step's state, read by its attention patches.
TOKENFLOW_STEP = contextvars.ContextVar("video_edit_tokenflow_step", default=None)


def cond_chunks(extra_options, batch: int) -> tuple[list[int], int]:
    """Indices of the conditional chunks in an attention batch (``cond_or_uncond`` 0), and frames per chunk."""
    flags = extra_options.get("cond_or_uncond") or [0]
    return [i for i, flag in enumerate(flags) if flag == 0], batch // len(flags)
