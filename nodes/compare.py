"""VE_CompareVideos: the source and its edit side by side (or one above the other), frame by frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io

LAYOUTS = ("side_by_side", "top_bottom")


def stack_frames(before: torch.Tensor, after: torch.Tensor, layout: str, gap: int = 0) -> torch.Tensor:
    """IMAGE batches ``[F,H,W,C]`` joined frame by frame, ``before`` left (or on top). ``after`` is resized to
    ``before``'s size when they differ; ``gap`` white pixels separate the two."""
    for name, images in (("before", before), ("after", after)):
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"{name}: expected an IMAGE batch [frames, height, width, channels], got shape "
                             f"{tuple(images.shape)}.")
    if before.shape[0] != after.shape[0]:
        raise ValueError(f"after: {after.shape[0]} frames against {before.shape[0]} in 'before'; compare clips of "
                         "equal length (load the source with the same n_frames / frame_stride as the edit).")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    frames, height, width, _ = before.shape
    channels = min(before.shape[-1], after.shape[-1], 3)
    before, after = before[..., :channels], after[..., :channels].to(before)
    if after.shape[1:3] != before.shape[1:3]:
        after = F.interpolate(after.movedim(-1, 1), size=(height, width), mode="bilinear", align_corners=False,
                              antialias=True).movedim(1, -1).clamp(0, 1)
    dim = 2 if layout == "side_by_side" else 1
    gap_shape = (frames, height, gap, channels) if dim == 2 else (frames, gap, width, channels)
    return torch.cat([before, before.new_ones(gap_shape), after], dim=dim)


class CompareVideos(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_CompareVideos",
            display_name="Compare Before/After (video)",
            category="video_edit/io",
            description="Joins two clips frame by frame, side by side or one above the other, so the edit can be "
                        "judged against its source. Both need the same number of frames; 'after' is resized to "
                        "'before' when their sizes differ.",
            inputs=[
                io.Image.Input("before", tooltip="The source frames (VE Load Video)."),
                io.Image.Input("after", tooltip="The edited frames (VAE Decode)."),
                io.Combo.Input("layout", options=list(LAYOUTS), default="side_by_side"),
                io.Int.Input("gap", default=8, min=0, max=256, tooltip="White pixels between the two."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, before, after, layout, gap) -> io.NodeOutput:
        return io.NodeOutput(stack_frames(before, after, layout, gap))


NODES = [CompareVideos]
