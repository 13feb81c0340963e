"""FateZero workflows: a zero-shot attribute edit with the image model, and a shape edit on a Tune-A-Video-tuned model.

Official settings (config/teaser/jeep_watercolor.yaml, config/teaser/jeep_posche.yaml): 8 frames at 512x512,
50 DDIM steps for inversion and editing, cfg 7.5; zero-shot: the pseudo-3D UNet (frame-spanning GroupNorm) with
middle-frame attention in the blocks of at least 640 channels (least_sc_channel), self/cross replace 0.8;
shape: the tuned model's sparse-causal attention, replace 0.5, the blend words of both prompts blending the
self-attention and the latents (jeep_posche_local_latent_blend.yaml). Run tune_a_video_edit first
for the tuned file. The maps take about 0.21 GiB per step for 8 frames (tools/benchmarks/fatezero.py).
fatezero_fast is the pack's fast recipe: fixed_point inversion with one refinement at 20 steps, sampled in 20
(60 model calls instead of 100; docs/nodes/fatezero.md).
"""

from comfy_execution.graph_utils import GraphBuilder
from sample_clip import SAMPLE_CLIP

from .common import ddim_edit_and_save

from .tune_a_video import CHECKPOINT, SOURCE_PROMPT as SKIING_PROMPT, SOURCE_VIDEO as SKIING_VIDEO, TUNED_FILE

JEEP_VIDEO = SAMPLE_CLIP  # FateZero's jeep.mp4 is the clip these prompts describe
JEEP_PROMPT = "a silver jeep driving down a curvy road in the countryside"
RED_JEEP_PROMPT = "a red jeep driving down a curvy road in the countryside"
PANDA_PROMPT = "a panda is skiing"


OFFICIAL_INVERSION = {"steps": 50, "method": "ddim", "iterations": 3}
FAST_INVERSION = {"steps": 20, "method": "fixed_point", "iterations": 1}


def _fatezero(g: GraphBuilder, ckpt, model, video_file: str, frame_stride: int, source_prompt: str, edit_prompt: str,
              blend_words: str, blend: str, replace: float, word_swap: str, prefix: str,
              inversion_settings: dict = OFFICIAL_INVERSION):
    """Invert the clip with the source prompt storing attention, fuse, sample the edit, save it and show the mask."""
    video = g.node("VE_LoadVideo", file=video_file, n_frames=8, start_frame=0, frame_stride=frame_stride,
                   width=512, height=512, path="", memory_limit_gb=0.0)
    latent = g.node("VAEEncode", pixels=video.out(0), vae=ckpt.out(2))
    source = g.node("CLIPTextEncode", clip=ckpt.out(1), text=source_prompt)
    capture = g.node("VE_AttentionCaptureConfig", max_query_tokens=1024, memory_limit_gb=0.0)
    inversion = g.node("VE_DDIMInvert", model=model, latent=latent.out(0), keep_steps=0, conditioning=source.out(0),
                       attention_capture=capture.out(0), **inversion_settings)
    fusion = g.node("VE_AttentionFusion", model=model, inversion=inversion.out(1), clip=ckpt.out(1),
                    source_prompt=source_prompt, edit_prompt=edit_prompt, blend_words=blend_words,
                    self_replace=replace, cross_replace=replace, mask_threshold=0.3, reweight="", blend_start=0.2,
                    blend_end=0.8, blend=blend, word_swap=word_swap, blend_source="noisier level")
    positive = g.node("CLIPTextEncode", clip=ckpt.out(1), text=edit_prompt)
    negative = g.node("CLIPTextEncode", clip=ckpt.out(1), text="")
    ddim_edit_and_save(g, ckpt, fusion.out(0), positive.out(0), negative.out(0), inversion.out(0), video,
                       cfg=7.5, seed=0, prefix=prefix, steps=inversion_settings["steps"])
    mask = g.node("MaskToImage", mask=fusion.out(1))
    g.node("PreviewImage", images=mask.out(0))


def fatezero_edit(inversion_settings: dict = OFFICIAL_INVERSION, prefix: str = "video_edit/fatezero"):
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    # the official zero-shot model: frame-spanning GroupNorm (the pseudo-3D UNet, its temporal layers still zero),
    # middle-frame attention in the blocks of 640 channels and more (least_sc_channel 640)
    inflated = g.node("VE_InflateUNet", model=ckpt.out(0), frame_groupnorm=True, temporal_mask="none",
                      temporal_window=0)
    middle = g.node("VE_SparseCausalAttention", model=inflated.out(0), mode="middle_frame", start_percent=0.0,
                    end_percent=1.0, min_channels=640)
    # an attribute edit: the official attribute and style configs refine (is_replace_controller false)
    _fatezero(g, ckpt, middle.out(0), JEEP_VIDEO, 1, JEEP_PROMPT, RED_JEEP_PROMPT, "jeep", "latents", 0.8, "refine",
              prefix, inversion_settings)
    return g.finalize()


def fatezero_fast():
    """fatezero_edit with the fast recipe: 20 fixed-point steps of 2 model calls, the edit in 20 steps."""
    return fatezero_edit(FAST_INVERSION, "video_edit/fatezero_fast")


def fatezero_shape_edit():
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    tuned = g.node("VE_LoadTuned", model=ckpt.out(0), tuned_file=TUNED_FILE)
    sparse = g.node("VE_SparseCausalAttention", model=tuned.out(0), mode="sparse_causal", start_percent=0.0,
                    end_percent=1.0, min_channels=0)
    _fatezero(g, ckpt, sparse.out(0), SKIING_VIDEO, 6, SKIING_PROMPT, PANDA_PROMPT, "man panda", "both", 0.5,
              "replace", "video_edit/fatezero_shape")
    return g.finalize()


WORKFLOWS = {
    "fatezero_edit": fatezero_edit,
    "fatezero_fast": fatezero_fast,
    "fatezero_shape_edit": fatezero_shape_edit,
}
