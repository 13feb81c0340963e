"""TokenFlow workflows: edit a clip with the image model, the same on a Tune-A-Video-tuned model, and a long clip
(240 frames) at bounded memory: inverted through context windows, edited a few keyframes at a time.

Official settings (preprocess.py, configs/config_pnp.yaml): inversion in 500 DDIM steps keeping the latents of the
50 sampling steps, cfg 7.5, keyframe chunks of 8 frames, PnP windows
0.5 / 0.8, seed 1, the negative prompt below. Run tune_a_video_edit first for the tuned file.
tokenflow_fast is the pack's fast recipe: the inversion at the sampler's own 50 steps, fixed_point with no extra
refinement (50 model calls instead of 500; docs/nodes/tokenflow.md).
tokenflow_sd21 is tokenflow_edit's recipe on the official default base model, sd_version '2.1' (stable-diffusion-2-1-base).
tokenflow_sdxl is the fast recipe on SDXL base 1.0 at its native 1024x1024, 24 frames (TokenFlow itself has no SDXL
setting; the pack's SDXL support is docs/nodes/base_models.md).
"""

from comfy_execution.graph_utils import GraphBuilder

from .common import ddim_edit_and_save

from .tune_a_video import CHECKPOINT, SOURCE_PROMPT, SOURCE_VIDEO, TUNED_FILE

EDIT_PROMPT = "a marble sculpture of a man skiing"
NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"
SD21_BASE_CHECKPOINT = "v2-1_512-ema-pruned.safetensors"  # stabilityai/stable-diffusion-2-1-base, single file
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"  # stabilityai/stable-diffusion-xl-base-1.0, single file


OFFICIAL_INVERSION = {"steps": 500, "method": "ddim", "iterations": 3, "keep_steps": 50}
FAST_INVERSION = {"steps": 50, "method": "fixed_point", "iterations": 0, "keep_steps": 0}


def _edit(g: GraphBuilder, ckpt, model, n_frames: int, frame_stride: int, prefix: str, inversion_model=None,
          keyframes_per_pass: int = 0, inversion_settings: dict = OFFICIAL_INVERSION, size: int = 512):
    """Load and invert the clip with the inversion prompt, TokenFlow, sample from its latent, save the video."""
    video = g.node("VE_LoadVideo", file=SOURCE_VIDEO, n_frames=n_frames, start_frame=0, frame_stride=frame_stride,
                   width=size, height=size, path="", memory_limit_gb=0.0)
    latent = g.node("VAEEncode", pixels=video.out(0), vae=ckpt.out(2))
    source = g.node("CLIPTextEncode", clip=ckpt.out(1), text=SOURCE_PROMPT)
    inversion = g.node("VE_DDIMInvert", model=inversion_model or model, latent=latent.out(0),
                       conditioning=source.out(0), **inversion_settings)
    tokenflow = g.node("VE_TokenFlow", model=model, inversion=inversion.out(1), conditioning=source.out(0),
                       keyframe_chunk_size=8, pnp_attention_window=0.5, pnp_feature_window=0.8, seed=1,
                       keyframes_per_pass=keyframes_per_pass)
    positive = g.node("CLIPTextEncode", clip=ckpt.out(1), text=EDIT_PROMPT)
    negative = g.node("CLIPTextEncode", clip=ckpt.out(1), text=NEGATIVE_PROMPT)
    ddim_edit_and_save(g, ckpt, tokenflow.out(0), positive.out(0), negative.out(0), tokenflow.out(1), video,
                       cfg=7.5, seed=1, prefix=prefix)


def tokenflow_edit():
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    _edit(g, ckpt, ckpt.out(0), n_frames=40, frame_stride=1, prefix="video_edit/tokenflow")
    return g.finalize()


def tokenflow_fast():
    """tokenflow_edit with the fast inversion: 50 fixed-point steps, one model call each."""
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    _edit(g, ckpt, ckpt.out(0), n_frames=40, frame_stride=1, prefix="video_edit/tokenflow_fast",
          inversion_settings=FAST_INVERSION)
    return g.finalize()


def tokenflow_sd21():
    """TokenFlow's official default recipe (configs/config_pnp.yaml): SD 2.1-base, 40 frames, the same settings."""
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SD21_BASE_CHECKPOINT)
    _edit(g, ckpt, ckpt.out(0), n_frames=40, frame_stride=1, prefix="video_edit/tokenflow_sd21")
    return g.finalize()


def tokenflow_sdxl():
    """tokenflow_fast on SDXL base 1.0 at its native 1024x1024: 24 frames, the inversion at the sampler's 50 steps."""
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=SDXL_CHECKPOINT)
    _edit(g, ckpt, ckpt.out(0), n_frames=24, frame_stride=1, prefix="video_edit/tokenflow_sdxl",
          inversion_settings=FAST_INVERSION, size=1024)
    return g.finalize()


def tokenflow_on_tuned():
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    tuned = g.node("VE_LoadTuned", model=ckpt.out(0), tuned_file=TUNED_FILE)
    _edit(g, ckpt, tuned.out(0), n_frames=24, frame_stride=2, prefix="video_edit/tokenflow_on_tuned")
    return g.finalize()


def tokenflow_long_clip():
    """240 frames: the inversion runs 16 frames at a time (VE Context Windows), the edit 2 keyframes (16 frames)
    per pass, so memory stays that of a 16-frame clip."""
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    windows = g.node("VE_ContextWindows", model=ckpt.out(0), context_length=16, context_overlap=4)
    _edit(g, ckpt, ckpt.out(0), n_frames=240, frame_stride=1, prefix="video_edit/tokenflow_long_clip",
          inversion_model=windows.out(0), keyframes_per_pass=2)
    return g.finalize()


# Workflows whose checkpoint is not SD1.x: the base model the demo and the tests give them (tools/demo.py).
BASE_MODELS = {"tokenflow_sd21": "sd21", "tokenflow_sdxl": "sdxl"}

WORKFLOWS = {
    "tokenflow_edit": tokenflow_edit,
    "tokenflow_fast": tokenflow_fast,
    "tokenflow_sd21": tokenflow_sd21,
    "tokenflow_sdxl": tokenflow_sdxl,
    "tokenflow_on_tuned": tokenflow_on_tuned,
    "tokenflow_long_clip": tokenflow_long_clip,
}
