"""VE_InflateUNet: Tune-A-Video's temporal attention after every transformer block's feed-forward
(nodes/shared/video_unet.py injects it)."""

from __future__ import annotations

from comfy_api.latest import io

from ..kernels.temporal import TEMPORAL_MASKS, TemporalMask
from .shared.video_unet import inflate
from .shared.socket_types import VideoEditNode
from .shared.schema_fields import TUNE_A_VIDEO_ALIASES, MOTIONDIRECTOR_ALIASES, MAKE_YOUR_VIDEO_ALIASES, search_aliases


class InflateUNet(VideoEditNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_InflateUNet",
            display_name="VE Inflate UNet",
            category="video_edit/tune_a_video",
            **search_aliases(TUNE_A_VIDEO_ALIASES, MAKE_YOUR_VIDEO_ALIASES, MOTIONDIRECTOR_ALIASES, ("temporal attention", "inflate")),
            description=(
                "Adds Tune-A-Video's temporal attention after the feed-forward of every transformer block: pre-LayerNorm "
                "self-attention over frames at each pixel, residual, output zero-initialised so the untuned model equals "
                "the image model. frame_groupnorm (on = official) makes the ResNet GroupNorms and the final norm compute "
                "statistics over all frames of the clip instead of per frame: frames share brightness/contrast "
                "statistics, which steadies the clip but makes every frame depend on the others. temporal_mask "
                "causal (Make-Your-Video) lets each frame's temporal attention see only itself and earlier frames, "
                "within temporal_window frames, so a model tuned on a short clip can generate longer ones. "
                "The input MODEL is not changed."),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x MODEL (core Load Checkpoint)."),
                io.Boolean.Input("frame_groupnorm", default=True,
                                 tooltip="ResNet GroupNorm statistics over all frames (official Tune-A-Video)."),
                io.Combo.Input("temporal_mask", options=list(TEMPORAL_MASKS), default="none", optional=True,
                               tooltip="none: every frame sees every frame (Tune-A-Video). causal: itself and earlier "
                                       "frames only (Make-Your-Video)."),
                io.Int.Input("temporal_window", default=0, min=0, max=4096, optional=True,
                             tooltip="Frames a frame sees on either side (causal: before it); 0 = unlimited. "
                                     "Make-Your-Video: 15."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with temporal layers, for VE One-Shot Tune, "
                                                                  "VE Train MotionDirector or VE Load Tuned Model.")],
        )

    @classmethod
    def execute(cls, model, frame_groupnorm, temporal_mask="none", temporal_window=0) -> io.NodeOutput:
        return io.NodeOutput(inflate(model, frame_groupnorm=frame_groupnorm,
                                     mask=TemporalMask(temporal_mask, temporal_window)))


NODES = [InflateUNet]
