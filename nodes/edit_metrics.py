"""VE_EditMetrics: the numbers papers compare video edits by, shown in the node and plotted per frame: the warp
error of the edit along the source clip's optical flow (OpenCV's DIS flow, no model download) and, with a CLIP
vision model, the cosine similarity of consecutive edited frames."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..kernels.metrics import consecutive_cosine, warp_errors
from .plots import plot_curves


def optical_flow(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward DIS flows ``(N - 1, 2, H, W)`` between consecutive frames of an IMAGE ``(N, H, W, 3)``."""
    gray = [cv2.cvtColor((frame.cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
            for frame in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def flows(pairs):
        return torch.stack([torch.from_numpy(dis.calc(a, b, None)).permute(2, 0, 1) for a, b in pairs])

    return flows(zip(gray[:-1], gray[1:])), flows(zip(gray[1:], gray[:-1]))


def as_source_size(edited: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``edited`` ``(N, C, H, W)`` resized (bilinear, antialiased) to the source's size where they differ."""
    if edited.shape[-2:] == source.shape[-2:]:
        return edited
    return F.interpolate(edited, size=source.shape[-2:], mode="bilinear", antialias=True, align_corners=False)


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
    frames = as_source_size(edited.movedim(-1, 1).float().cpu(), source.movedim(-1, 1))
    metrics = {"warp error": warp_errors(frames, forward, backward)}
    if clip_vision is not None:
        metrics["CLIP consistency"] = clip_consistency(clip_vision, edited).cpu()
    return metrics


class EditMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_EditMetrics",
            display_name="Edit Metrics (video)",
            category="video_edit/video",
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
                io.Image.Output(display_name="plot"),
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


NODES = [EditMetrics]
