"""VE_InflateUNet: Tune-A-Video's temporal attention after every transformer block's feed-forward
(nodes/video_unet.py injects it)."""

from __future__ import annotations

from comfy_api.latest import io

from .video_unet import inflate


class InflateUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VE_InflateUNet",
            display_name="Inflate UNet for Video",
            category="video_edit/tune_a_video",
            description=(
                "Adds Tune-A-Video's temporal attention after the feed-forward of every transformer block: pre-LayerNorm "
                "self-attention over frames at each pixel, residual, output zero-initialised so the untuned model equals "
                "the image model. frame_groupnorm (on = official) makes the ResNet GroupNorms and the final norm compute "
                "statistics over all frames of the clip instead of per frame: frames share brightness/contrast "
                "statistics, which steadies the clip but makes every frame depend on the others. "
                "The input MODEL is not changed."),
            inputs=[
                io.Model.Input("model"),
                io.Boolean.Input("frame_groupnorm", default=True,
                                 tooltip="ResNet GroupNorm statistics over all frames (official Tune-A-Video)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, frame_groupnorm) -> io.NodeOutput:
        return io.NodeOutput(inflate(model, frame_groupnorm=frame_groupnorm))


NODES = [InflateUNet]
