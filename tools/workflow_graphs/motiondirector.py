"""MotionDirector workflows: learn a motion from two clips and save it; generate a new subject with that motion."""

from comfy_execution.graph_utils import GraphBuilder
from sample_clip import SAMPLE_CLIP

CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
SOURCE_VIDEO = SAMPLE_CLIP
CLIPS = (  # two clips of one motion, each with its own prompt: (start_frame, n_frames, prompt)
    (0, 16, "a man is skiing"),
    (8, 12, "a man skiing down a snowy slope"),
)
NEW_PROMPT = "a panda is skiing on a snowy mountain"
LORA_NAME = "man_skiing_motion"


def _checkpoint_and_inflated(g: GraphBuilder):
    """The base: SD1.5 with temporal layers, per-frame GroupNorm (the 2D ResNets of MotionDirector's ModelScope)."""
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    inflated = g.node("VE_InflateUNet", model=ckpt.out(0), frame_groupnorm=False, temporal_mask="none",
                      temporal_window=0)
    return ckpt, inflated


def clip_set_of(g: GraphBuilder, ckpt):
    """The training videos: each clip of CLIPS loaded, encoded and captioned, chained into one VE Motion Clip Set."""
    clip_set = None
    for start_frame, n_frames, prompt in CLIPS:
        video = g.node("VE_LoadVideo", file=SOURCE_VIDEO, n_frames=n_frames, start_frame=start_frame, frame_stride=2,
                       width=384, height=384, path="", memory_limit_gb=0.0)
        latent = g.node("VAEEncode", pixels=video.out(0), vae=ckpt.out(2))
        text = g.node("CLIPTextEncode", clip=ckpt.out(1), text=prompt)
        inputs = {"clip_set": clip_set.out(0)} if clip_set is not None else {}
        clip_set = g.node("VE_MotionClipSet", latent=latent.out(0), conditioning=text.out(0), **inputs)
    return clip_set


def generate(g, ckpt, model, prompt, prefix):
    """Official inference: DDIM 30 steps, cfg 12, 384x384, 16 frames (the batch), saved at 8 fps."""
    positive = g.node("CLIPTextEncode", clip=ckpt.out(1), text=prompt)
    negative = g.node("CLIPTextEncode", clip=ckpt.out(1), text="")
    empty = g.node("EmptyLatentImage", width=384, height=384, batch_size=16)
    sample = g.node("KSampler", model=model, seed=0, steps=30, cfg=12.0, sampler_name="ddim", scheduler="ddim_uniform",
                    positive=positive.out(0), negative=negative.out(0), latent_image=empty.out(0), denoise=1.0)
    frames = g.node("VAEDecode", samples=sample.out(0), vae=ckpt.out(2))
    g.node("VE_SaveVideo", images=frames.out(0), fps=8.0, filename_prefix=prefix, format="mp4")


def motiondirector_train():
    g = GraphBuilder(prefix="")
    ckpt, inflated = _checkpoint_and_inflated(g)
    clip_set = clip_set_of(g, ckpt)
    train = g.node("VE_TrainMotionDirector", model=inflated.out(0), clip_set=clip_set.out(0), steps=300, rank=32,
                   learning_rate=5e-4, weight_decay=1e-4, seed=0, gradient_checkpointing=True,
                   spatial_mask_probability=0.2, lora_dropout=0.1, checkpoint_every=0, checkpoint_name=LORA_NAME,
                   spatial_sets="one per video", temporal_target="VE temporal layers")
    g.node("VE_SaveMotionLoRA", spatial_lora=train.out(0), temporal_lora=train.out(1), filename=LORA_NAME)
    g.node("VE_PlotLoss", loss=train.out(2))  # spatial and temporal loss curves
    # Validation sample, as the official training loop does: temporal LoRA only.
    applied = g.node("VE_ApplyMotionLoRA", model=inflated.out(0), spatial_lora=train.out(0), spatial_strength=0.0,
                     temporal_lora=train.out(1), temporal_strength=1.0, spatial_set=0)
    generate(g, ckpt, applied.out(0), NEW_PROMPT, "video_edit/motiondirector_validation")
    return g.finalize()


def motiondirector_generate():
    g = GraphBuilder(prefix="")
    ckpt, inflated = _checkpoint_and_inflated(g)
    lora = g.node("VE_LoadMotionLoRA", model=inflated.out(0), spatial_file=f"{LORA_NAME}_00001_spatial.safetensors",
                  spatial_strength=0.0, temporal_file=f"{LORA_NAME}_00001_temporal.safetensors", temporal_strength=1.0,
                  spatial_set=0)
    generate(g, ckpt, lora.out(0), NEW_PROMPT, "video_edit/motiondirector")
    return g.finalize()


WORKFLOWS = {
    "motiondirector_train": motiondirector_train,
    "motiondirector_generate": motiondirector_generate,
}
