"""Comparing an edit with its source: VE_CompareVideos shows them side by side (or one above the other), frame by
frame; VE_EditMetrics measures it by the numbers papers compare video edits by, shown in the node and plotted per
frame: the warp error of the edit along the source clip's optical flow (OpenCV's DIS flow, no model download) and,
with a CLIP vision model, the cosine similarity of consecutive edited frames."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..kernels.metrics import consecutive_cosine, warp_errors
from .shared.plots import plot_curves
from .shared.socket_types import VideoEditNode
from .shared.schema_fields import VIDEO_EDIT_ALIASES, search_aliases

LAYOUTS = ("side_by_side", "top_bottom")


def sized_like(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """IMAGE ``images`` resized (bilinear, antialiased, kept in [0, 1]) to ``reference``'s frame size if it differs."""
    if images.shape[1:3] == reference.shape[1:3]:
        return images
    return F.interpolate(images.movedim(-1, 1), size=reference.shape[1:3], mode="bilinear", align_corners=False,
                         antialias=True).movedim(1, -1).clamp(0, 1)


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
    before, after = before[..., :channels], sized_like(after[..., :channels].to(before), before)
    dim = 2 if layout == "side_by_side" else 1
    gap_shape = (frames, height, gap, channels) if dim == 2 else (frames, gap, width, channels)
    return torch.cat([before, before.new_ones(gap_shape), after], dim=dim)


class CompareVideos(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_CompareVideos",
            display_name="VE Compare Before/After",
            category="video_edit/video",
            **search_aliases(VIDEO_EDIT_ALIASES, ("compare", "before after", "side by side")),
            description="Joins two clips frame by frame, side by side or one above the other, so the edit can be "
                        "judged against its source. Both need the same number of frames; 'after' is resized to "
                        "'before' when their sizes differ.",
            inputs=[
                io.Image.Input("before", tooltip="The source frames (VE Load Video)."),
                io.Image.Input("after", tooltip="The edited frames (VAE Decode)."),
                io.Combo.Input("layout", options=list(LAYOUTS), default="side_by_side",
                               tooltip="side_by_side: before left, after right; top_bottom: before above."),
                io.Int.Input("gap", default=8, min=0, max=256, tooltip="White pixels between the two."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The joined frames, for VE Save Video.")],
        )

    @classmethod
    def execute(cls, before, after, layout, gap) -> io.NodeOutput:
        return io.NodeOutput(stack_frames(before, after, layout, gap))


def optical_flow(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward DIS flows ``(N - 1, 2, H, W)`` between consecutive frames of an IMAGE ``(N, H, W, 3)``."""
    gray = [cv2.cvtColor((frame.cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
            for frame in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def flows(pairs):
        return torch.stack([torch.from_numpy(dis.calc(a, b, None)).permute(2, 0, 1) for a, b in pairs])

    return flows(zip(gray[:-1], gray[1:])), flows(zip(gray[1:], gray[:-1]))


def clip_consistency(clip_vision, frames: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of consecutive frames' CLIP image embeddings (CLIP frame consistency)."""
    with torch.no_grad():
        embeddings = clip_vision.encode_image(frames)["image_embeds"]
    return consecutive_cosine(embeddings)


def edit_metrics(source: torch.Tensor, edited: torch.Tensor, clip_vision=None) -> dict[str, torch.Tensor]:
    """Per consecutive pair: ``warp error`` and, with ``clip_vision``, ``CLIP consistency`` of the edit."""
    if source.shape[0] != edited.shape[0]:
        raise ValueError(f"edited: {edited.shape[0]} frames for a {source.shape[0]}-frame source; connect the edit of "
                         "this source (same frames, in order).")
    if source.shape[0] < 2:
        raise ValueError("source: the metrics compare consecutive frames; connect a clip of at least 2 frames.")
    forward, backward = optical_flow(source)
    frames = sized_like(edited.float().cpu(), source).movedim(-1, 1)
    metrics = {"warp error": warp_errors(frames, forward, backward)}
    if clip_vision is not None:
        metrics["CLIP consistency"] = clip_consistency(clip_vision, edited).cpu()
    return metrics


class EditMetrics(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_EditMetrics",
            display_name="VE Edit Metrics",
            category="video_edit/video",
            **search_aliases(VIDEO_EDIT_ALIASES, ("warp error", "clip consistency", "temporal consistency")),
            description=(
                "Measures an edit against its source clip. Warp error (temporal consistency): each edited frame "
                "against the next one warped back along the source's optical flow (OpenCV DIS), occluded pixels left "
                "out by a forward-backward check; mean squared difference of RGB in [0, 1], lower is steadier. With "
                "a CLIP vision model: CLIP frame consistency, the mean cosine of consecutive edited frames' "
                "embeddings (higher is steadier). Shows the numbers and plots them per frame pair."),
            inputs=[
                io.Image.Input("source", tooltip="The source clip (VE Load Video's frames)."),
                io.Image.Input("edited", tooltip="The edit of that clip, same frames (resized to the source's size "
                                                 "if it differs)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="From core Load CLIP Vision: adds CLIP frame consistency."),
            ],
            outputs=[
                io.Float.Output(display_name="warp_error", tooltip="Mean over frame pairs."),
                io.Float.Output(display_name="clip_consistency",
                                tooltip="Mean over frame pairs; NaN without a CLIP vision model."),
                io.Image.Output(display_name="plot", tooltip="Both measures per frame pair, as an image (previewed)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, source, edited, clip_vision=None) -> io.NodeOutput:
        metrics = edit_metrics(source, edited, clip_vision)
        means = {name: float(values.mean()) for name, values in metrics.items()}
        lines = [f"warp error: {means['warp error']:.4g} (mean of {len(metrics['warp error'])} frame pairs)"]
        if "CLIP consistency" in means:
            lines.append(f"CLIP frame consistency: {means['CLIP consistency']:.4f}")
        plot = torch.cat([plot_curves({name: values.tolist()}, "frame pair", [line])
                          for (name, values), line in zip(metrics.items(), lines)], dim=1)
        shown = {**ui.PreviewImage(plot, cls=cls).as_dict(), "text": lines}
        return io.NodeOutput(means["warp error"], means.get("CLIP consistency", math.nan), plot, ui=shown)


NODES = [CompareVideos, EditMetrics]
