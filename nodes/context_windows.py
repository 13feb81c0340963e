"""VE_ContextWindows: denoise (and invert) a long clip a window of frames at a time, so memory is bounded by the
window instead of the clip (kernels/windows.py).

It plugs into ComfyUI's own context-window hook (``model_options["context_handler"]``, used by every sampler and
by VE DDIM Invert). Unlike the generic handler, it keeps the clip's anchor frame global: the window holding the
anchor (sparse-causal's frame 0, FateZero's middle frame) runs first in every step, its keys and values are kept
per attention layer, and later windows attend to them. Per-frame ControlNet hints are cut to each window.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.model_management
import torch
from comfy.context_windows import ContextHandlerABC, create_prepare_sampling_wrapper
from comfy_api.latest import io

from ..kernels.windows import frame_windows, window_weights
from .shared.animatediff import fit_motion_module_per_call
from .shared.comfy_internals import controlnet_hint, model_cond_rows, set_controlnet_hint
from .shared.patcher import controlnets
from .shared.socket_types import VideoEditNode
from .shared.unet_call import BORROWED_OPTION
from .shared.windowing import BorrowedFrames, FrameWindow, attn1_patches
from .shared.schema_fields import VIDEO_EDIT_ALIASES, search_aliases


def per_frame(value, frames: int) -> bool:
    return torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == frames


@contextlib.contextmanager
def window_hints(conds, index: list[int], frames: int):
    """While a window runs, every ControlNet in the conds whose hint has one image per frame sees only the window's."""
    swapped = []
    for control in controlnets(conds):
        hint = controlnet_hint(control)
        if per_frame(hint, frames) and all(control is not c for c, _ in swapped):
            swapped.append((control, hint))
            set_controlnet_hint(control, hint[index])
    try:
        yield
    finally:
        for control, hint in swapped:
            set_controlnet_hint(control, hint)


def window_cond(cond_in, window: FrameWindow, frames: int):
    """A cond list with every per-frame tensor (top level or a model cond's ``.cond``) cut to the window."""
    if cond_in is None:
        return None
    resized = []
    for entry in cond_in:
        entry = dict(entry)
        for name, value in entry.items():
            if per_frame(value, frames):
                entry[name] = value[window.index_list]
            elif isinstance(value, dict):
                entry[name] = {key: model_cond_rows(item, window.index_list)
                               if per_frame(getattr(item, "cond", None), frames) else
                               item[window.index_list] if per_frame(item, frames) else item
                               for key, item in value.items()}
        resized.append(entry)
    return resized


class VideoWindows(ContextHandlerABC):
    """ComfyUI context handler: fixed windows of ``length`` frames overlapping by ``overlap``, blended with linear
    ramps; the windows holding an anchor frame of the model's cross-frame attention run first."""

    def __init__(self, length: int, overlap: int):
        super().__init__()
        frame_windows(length + 1, length, overlap)  # checks the settings
        self.context_length, self.context_overlap, self.dim = length, overlap, 0
        self.announced: set[int] = set()  # clip lengths already logged

    def should_use_context(self, model, conds, x_in, timestep, model_options) -> bool:
        return x_in.shape[0] > self.context_length

    def get_resized_cond(self, cond_in, x_in, window, device=None):
        return window_cond(cond_in, window, x_in.shape[0])

    def windows(self, frames: int, model_options) -> list[list[int]]:
        anchors = {a for patch in attn1_patches(model_options) if hasattr(patch, "anchor_frames")
                   for a in patch.anchor_frames(frames)}
        windows = frame_windows(frames, self.context_length, self.context_overlap)
        if frames not in self.announced:
            self.announced.add(frames)
            logging.info("VE Context Windows: %d frames in %d windows of up to %d (overlap %d)%s", frames,
                         len(windows), self.context_length, self.context_overlap,
                         f", anchor frames {sorted(anchors)} kept for every window" if anchors else "")
        return sorted(windows, key=lambda window: not anchors.intersection(window))

    def execute(self, calc_cond_batch, model, conds, x_in, timestep, model_options):
        frames = x_in.shape[0]
        borrowed = BorrowedFrames(frames)
        transformer_options = {**model_options.get("transformer_options", {}), BORROWED_OPTION: borrowed}
        options = {**model_options, "transformer_options": transformer_options}
        totals, counts = None, torch.zeros(frames, device=x_in.device)
        for index in self.windows(frames, model_options):
            comfy.model_management.throw_exception_if_processing_interrupted()
            window = FrameWindow(index)
            borrowed.start_window()
            transformer_options["context_window"] = window
            sub_conds = [window_cond(cond, window, frames) for cond in conds]
            sub_t = timestep[index] if per_frame(timestep, frames) else timestep
            with window_hints(conds, index, frames):
                outs = calc_cond_batch(model, sub_conds, x_in[index], sub_t, options)
            weights = window_weights(index, frames, self.context_overlap).to(x_in)
            if totals is None:
                totals = [torch.zeros_like(x_in) for _ in outs]
            for total, out in zip(totals, outs):
                total[index] += out * weights.view(-1, *(1,) * (x_in.ndim - 1))
            counts[index] += weights
        return [total / counts.view(-1, *(1,) * (x_in.ndim - 1)) for total in totals]


def with_context_windows(model, length: int, overlap: int):
    """A clone of ``model`` that samples and inverts clips longer than ``length`` frames window by window."""
    clone = model.clone()
    clone.model_options["context_handler"] = VideoWindows(length, overlap)
    create_prepare_sampling_wrapper(clone)  # ComfyUI sizes the model's memory for one window, not the clip
    fit_motion_module_per_call(clone)  # AnimateDiff-Evolved's motion module: each window's frames
    return clone


class ContextWindows(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_ContextWindows",
            display_name="VE Context Windows",
            category="video_edit/sampling",
            **search_aliases(VIDEO_EDIT_ALIASES, ("long clips", "long video", "sliding window")),
            description=(
                "Samples and inverts a clip longer than context_length a window of frames at a time, so memory "
                "follows the window, not the clip. Windows overlap by context_overlap frames and are blended with "
                "linear ramps. Cross-frame attention keeps the clip's anchor frame (sparse-causal's first frame, "
                "FateZero's middle frame) in every window; temporal attention and frame GroupNorm see the window. "
                "Use it for Tune-A-Video, MotionDirector, Make-Your-Video and FateZero (put it before VE DDIM "
                "Invert); VE TokenFlow streams long clips itself. The input MODEL is not changed."),
            inputs=[
                io.Model.Input("model", tooltip="The video model to run a window at a time."),
                io.Int.Input("context_length", default=16, min=2, max=4096,
                             tooltip="Frames per window (e.g. the length the model was tuned or trained on)."),
                io.Int.Input("context_overlap", default=4, min=0, max=4095,
                             tooltip="Frames shared by neighbouring windows, blended across."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The same model, sampled and inverted window by window.")],
        )

    @classmethod
    def execute(cls, model, context_length, context_overlap) -> io.NodeOutput:
        return io.NodeOutput(with_context_windows(model, context_length, context_overlap))


NODES = [ContextWindows]
