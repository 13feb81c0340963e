"""Make-Your-Video workflow: depth-guided generation of a longer clip with the causal temporal mask.

The model is SD1.5 inflated with Make-Your-Video's causal temporal mask (each frame's temporal attention sees
itself and the 15 frames before it) carrying the motion LoRA that motiondirector_train learns
from 16- and 12-frame clips; per-frame depth maps of a 32-frame clip guide the structure through a depth
ControlNet, the prompt the appearance. Run motiondirector_train first for the LoRA.
"""

from comfy_execution.graph_utils import GraphBuilder
from sample_clip import SAMPLE_DEPTH

from .motiondirector import CHECKPOINT, LORA_NAME

DEPTH_VIDEO = SAMPLE_DEPTH  # per-frame depth maps of the clip (docs/nodes/make_your_video.md)
DEPTH_CONTROLNET = "control_v11f1p_sd15_depth_fp16.safetensors"
PROMPT = "a knight in shining armour skiing down a snowy mountain, oil painting"


def make_your_video_depth():
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    inflated = g.node("VE_InflateUNet", model=ckpt.out(0), frame_groupnorm=False, temporal_mask="causal",
                      temporal_window=15)
    motion = g.node("VE_LoadMotionLoRA", model=inflated.out(0), spatial_file="none", spatial_strength=0.0,
                    temporal_file=f"{LORA_NAME}_00001_temporal.safetensors", temporal_strength=1.0, spatial_set=0)
    depth = g.node("VE_LoadVideo", file=DEPTH_VIDEO, n_frames=32, start_frame=0, frame_stride=1, width=384,
                   height=384, path="", memory_limit_gb=0.0)
    positive = g.node("CLIPTextEncode", clip=ckpt.out(1), text=PROMPT)
    negative = g.node("CLIPTextEncode", clip=ckpt.out(1), text="blurry, low quality")
    controlnet = g.node("ControlNetLoader", control_net_name=DEPTH_CONTROLNET)
    guided = g.node("ControlNetApplyAdvanced", positive=positive.out(0), negative=negative.out(0),
                    control_net=controlnet.out(0), image=depth.out(0), strength=1.0, start_percent=0.0,
                    end_percent=1.0)
    empty = g.node("EmptyLatentImage", width=384, height=384, batch_size=32)  # one latent per depth frame
    sample = g.node("KSampler", model=motion.out(0), seed=0, steps=50, cfg=7.5, sampler_name="ddim",
                    scheduler="ddim_uniform", positive=guided.out(0), negative=guided.out(1),
                    latent_image=empty.out(0), denoise=1.0)
    frames = g.node("VAEDecode", samples=sample.out(0), vae=ckpt.out(2))
    g.node("VE_SaveVideo", images=frames.out(0), fps=depth.out(1), filename_prefix="video_edit/make_your_video",
           format="mp4")
    return g.finalize()


WORKFLOWS = {"make_your_video_depth": make_your_video_depth}
