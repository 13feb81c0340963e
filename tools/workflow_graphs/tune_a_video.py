"""Tune-A-Video workflows: tune on the clip and edit, the same with ControlNet, and edit from a saved tuning (as the
official recipe does, and with the pack's fast recipe: fixed_point inversion with one refinement at 20 steps,
sampled in 20: 60 model calls instead of 100; docs/nodes/tune_a_video.md)."""

from comfy_execution.graph_utils import GraphBuilder
from sample_clip import SAMPLE_CLIP

from .common import ddim_edit_and_save

CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
SOURCE_VIDEO = SAMPLE_CLIP  # tools/sample_clip.py; the official clip is man-skiing.mp4
SOURCE_PROMPT = "a man is skiing"
EDIT_PROMPT = "spider man is skiing on the beach, cartoon style"
TUNED_NAME = "man_skiing"
TUNED_FILE = f"{TUNED_NAME}_00001_.safetensors"  # what VE_SaveTuned writes first for TUNED_NAME


def _source(g: GraphBuilder):
    """Checkpoint, the clip (24 frames, stride 2, 512x512) and its latents."""
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    video = g.node("VE_LoadVideo", file=SOURCE_VIDEO, n_frames=24, start_frame=0, frame_stride=2, width=512, height=512,
                   path="", memory_limit_gb=0.0)
    latent = g.node("VAEEncode", pixels=video.out(0), vae=ckpt.out(2))
    return ckpt, video, latent


OFFICIAL_INVERSION = {"steps": 50, "method": "ddim", "iterations": 3}
FAST_INVERSION = {"steps": 20, "method": "fixed_point", "iterations": 1}


def _invert_edit_save(g, ckpt, video, latent, model, positive, negative, prefix,
                      inversion_settings: dict = OFFICIAL_INVERSION):
    """Invert with the (tuned) model and the empty prompt, sample the edit from that noise, save the video."""
    inversion = g.node("VE_DDIMInvert", model=model, latent=latent.out(0), keep_steps=0, clip=ckpt.out(1),
                       **inversion_settings)
    ddim_edit_and_save(g, ckpt, model, positive, negative, inversion.out(0), video, cfg=12.5, seed=33,
                       prefix=prefix, steps=inversion_settings["steps"])


def _tuned_model(g, ckpt, latent):
    inflated = g.node("VE_InflateUNet", model=ckpt.out(0), frame_groupnorm=True, temporal_mask="none",
                      temporal_window=0)
    sparse = g.node("VE_SparseCausalAttention", model=inflated.out(0), mode="sparse_causal", start_percent=0.0,
                    end_percent=1.0, min_channels=0)
    source = g.node("CLIPTextEncode", clip=ckpt.out(1), text=SOURCE_PROMPT)
    tune = g.node("VE_OneShotTune", model=sparse.out(0), latent=latent.out(0), conditioning=source.out(0), steps=500,
                  learning_rate=3e-5, seed=33, gradient_checkpointing=True, image_mix=0.0, motion_module="frozen")
    g.node("VE_SaveTuned", model=tune.out(0), filename=TUNED_NAME, prompt=SOURCE_PROMPT)
    g.node("VE_PlotLoss", loss=tune.out(1))  # is it converging?
    return tune.out(0)


def _prompts(g, ckpt):
    edit = g.node("CLIPTextEncode", clip=ckpt.out(1), text=EDIT_PROMPT)
    negative = g.node("CLIPTextEncode", clip=ckpt.out(1), text="")
    return edit.out(0), negative.out(0)


def tune_a_video_edit():
    g = GraphBuilder(prefix="")
    ckpt, video, latent = _source(g)
    model = _tuned_model(g, ckpt, latent)
    positive, negative = _prompts(g, ckpt)
    _invert_edit_save(g, ckpt, video, latent, model, positive, negative, "video_edit/tune_a_video")
    return g.finalize()


def tune_a_video_controlnet():
    g = GraphBuilder(prefix="")
    ckpt, video, latent = _source(g)
    model = _tuned_model(g, ckpt, latent)
    positive, negative = _prompts(g, ckpt)
    hints = g.node("Canny", image=video.out(0), low_threshold=0.4, high_threshold=0.8)
    controlnet = g.node("ControlNetLoader", control_net_name=CONTROLNET)
    apply = g.node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=controlnet.out(0),
                   image=hints.out(0), strength=1.0, start_percent=0.0, end_percent=1.0)
    _invert_edit_save(g, ckpt, video, latent, model, apply.out(0), apply.out(1), "video_edit/tune_a_video_controlnet")
    return g.finalize()


def tune_a_video_reuse(inversion_settings: dict = OFFICIAL_INVERSION, prefix: str = "video_edit/tune_a_video_reuse"):
    g = GraphBuilder(prefix="")
    ckpt, video, latent = _source(g)
    tuned = g.node("VE_LoadTuned", model=ckpt.out(0), tuned_file=TUNED_FILE)
    sparse = g.node("VE_SparseCausalAttention", model=tuned.out(0), mode="sparse_causal", start_percent=0.0,
                    end_percent=1.0, min_channels=0)
    positive, negative = _prompts(g, ckpt)
    _invert_edit_save(g, ckpt, video, latent, sparse.out(0), positive, negative, prefix, inversion_settings)
    return g.finalize()


def tune_a_video_fast():
    """tune_a_video_reuse (the edit of a saved tuning) with the fast recipe: 20 fixed-point steps of 2 model calls,
    the edit in 20 steps."""
    return tune_a_video_reuse(FAST_INVERSION, "video_edit/tune_a_video_fast")


WORKFLOWS = {
    "tune_a_video_edit": tune_a_video_edit,
    "tune_a_video_controlnet": tune_a_video_controlnet,
    "tune_a_video_reuse": tune_a_video_reuse,
    "tune_a_video_fast": tune_a_video_fast,
}
