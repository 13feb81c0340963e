"""The pack's workflows, written as API graphs; tools/build_workflows.py turns them into workflows/*.json.

Each module exposes ``WORKFLOWS``: workflow name -> function returning an API prompt (``GraphBuilder(prefix="")``).
A workflow's name (``tune_a_video_edit``) is its handle in code, tests and the demo's ``--workflow``; its file is
named by its title (workflow_cards.TITLES).
"""

from workflow_titles import TITLES

from . import animatediff, fatezero, make_your_video, motiondirector, tokenflow, tune_a_video

MODULES = [tune_a_video, tokenflow, fatezero, motiondirector, make_your_video, animatediff]
# Workflows that load what another one saves (a tuned model, motion LoRAs): consumer -> producer.
PRODUCERS = {
    "tune_a_video_reuse": "tune_a_video_edit",
    "tune_a_video_fast": "tune_a_video_edit",
    "tokenflow_on_tuned": "tune_a_video_edit",
    "fatezero_shape_edit": "tune_a_video_edit",
    "motiondirector_generate": "motiondirector_train",
    "make_your_video_depth": "motiondirector_train",
    "motiondirector_animatediff": "motiondirector_animatediff_train",
}


# What each workflow does, what to change first, the inputs that matter, and its time on a GPU (estimates from
# the methods' papers for 512x512 on one A100-class GPU; measured times on 2 CPU cores are in the README).
ABOUT = {
    "tune_a_video_edit": (
        "Tune-A-Video: tunes SD1.5 on one clip (VE One-Shot Tune, 500 steps), inverts it (VE DDIM Invert) and "
        "samples the edit prompt from that noise.",
        "the clip (VE Load Video: the sample skier is selected), the source prompt (describes the clip) and the "
        "edit prompt", "steps 500, learning_rate 3e-5; cfg 12.5, 50 ddim steps", "about 10 min tuning + 1 min "
        "editing (estimate)"),
    "tune_a_video_controlnet": (
        "Tune-A-Video with a Canny ControlNet per frame keeping the clip's edges.",
        "the clip and both prompts; ControlNet strength", "as in 'Tune-A-Video - tune and edit a clip'",
        "about 11 min (estimate)"),
    "tune_a_video_reuse": (
        "Edits again with a model 'Tune-A-Video - tune and edit a clip' saved (VE Load Tuned Model): no "
        "retraining.",
        "the tuned file and the edit prompt", "the same clip and prompts the tuning used", "about 1 min (estimate)"),
    "tune_a_video_fast": (
        "Edits again with a model 'Tune-A-Video - tune and edit a clip' saved, with the pack's fast recipe: "
        "fixed_point inversion (one refinement) at 20 steps, the edit in 20 (60 UNet calls instead of 100).",
        "the tuned file and the edit prompt", "VE DDIM Invert method fixed_point, iterations 1, steps 20",
        "about 30 s (estimate)"),
    "tokenflow_edit": (
        "TokenFlow: training-free edit of 40 frames: keyframes edited together, their tokens propagated (on SD1.5; "
        "'TokenFlow - SD 2.1 (official default)' is the same on TokenFlow's default model, SD 2.1 base).",
        "the edit prompt (sampler) and the clip", "keyframe_chunk_size 8, pnp windows 0.5 / 0.8; 500 inversion "
        "steps kept at 50", "about 5 min (estimate)"),
    "tokenflow_fast": (
        "TokenFlow with the pack's fast recipe: the clip inverted at the sampler's own 50 steps (fixed_point, one "
        "model call each) instead of 500 DDIM steps: 150 UNet calls per edit instead of 600.",
        "the edit prompt (sampler) and the clip", "VE DDIM Invert method fixed_point, iterations 0, steps 50",
        "about 2 min (estimate)"),
    "tokenflow_sd21": (
        "TokenFlow's official default recipe: 'TokenFlow - edit a clip' on SD 2.1 base (stable-diffusion-2-1-base).",
        "the edit prompt (sampler) and the clip", "as in 'TokenFlow - edit a clip'", "about 5 min (estimate)"),
    "tokenflow_sdxl": (
        "TokenFlow on SDXL base 1.0 at its native 1024x1024, 24 frames, with the fast recipe (the clip inverted at "
        "the sampler's own 50 steps, fixed_point); TokenFlow was published on SD 1.5 / 2.1.",
        "the edit prompt (sampler) and the clip; VE Load Video's width / height (768 takes about half the time, "
        "below that SDXL loses detail)",
        "as in 'TokenFlow - fast recipe'; keyframe_chunk_size 8 (lower it if memory runs out)",
        "about 20 min at 1024x1024 (estimate)"),
    "tokenflow_on_tuned": (
        "TokenFlow on the model 'Tune-A-Video - tune and edit a clip' tuned.", "the tuned file and the edit prompt",
        "as in 'TokenFlow - edit a clip'", "about 3 min (estimate)"),
    "tokenflow_long_clip": (
        "TokenFlow on 240 frames, a few keyframes per pass, so memory follows the pass, not the clip.",
        "the clip and the edit prompt; keyframes_per_pass", "keyframes_per_pass, VE Context Windows' length",
        "about 25 min (estimate)"),
    "fatezero_edit": (
        "FateZero zero-shot attribute edit: the source attention stored while inverting is fused while editing.",
        "the clip, source_prompt, edit_prompt and blend_words (the official example is FateZero's jeep.mp4)",
        "self_replace / cross_replace 0.8, mask_threshold 0.3, 50 steps", "about 2 min (estimate)"),
    "fatezero_fast": (
        "FateZero with the pack's fast recipe: fixed_point inversion (one refinement) at 20 steps, the edit in 20: "
        "60 UNet calls instead of 100.", "the clip, source_prompt, edit_prompt and blend_words",
        "VE DDIM Invert method fixed_point, iterations 1, steps 20", "about 1 min (estimate)"),
    "fatezero_shape_edit": (
        "FateZero shape edit on the model 'Tune-A-Video - tune and edit a clip' tuned.",
        "the tuned file, the prompts and blend_words",
        "replace 0.5, blend 'both'", "about 2 min (estimate)"),
    "motiondirector_train": (
        "MotionDirector: learns the clips' motion as a temporal LoRA (and their look as a spatial one), saved.",
        "the clips (one VE Load Video + VE Motion Clip Set each) and their prompts", "steps 300, rank 32, "
        "learning_rate 5e-4", "about 20 min (estimate)"),
    "motiondirector_generate": (
        "Generates a new subject with the learned motion (temporal LoRA only).", "the LoRA files and the prompt",
        "temporal_strength 1, spatial_strength 0", "about 1 min (estimate)"),
    "make_your_video_depth": (
        "Make-Your-Video: a 32-frame clip from per-frame depth maps (depth ControlNet) with the causal temporal mask "
        "and the learned motion LoRA.", "the depth clip (the sample's depth maps are selected) and the prompt",
        "temporal_mask causal, temporal_window 15", "about 3 min (estimate)"),
    "motiondirector_animatediff_train": (
        "MotionDirector on AnimateDiff: learns the clips' motion as a LoRA of AnimateDiff-Evolved's motion module "
        "(mm_sd_v15_v2) and saves it in ADE's motion-LoRA format (models/animatediff_motion_lora/); samples the new "
        "prompt with the motion module alone, to compare.",
        "the clips (one VE Load Video + VE Motion Clip Set each, at most 32 frames) and their prompts",
        "steps 300, rank 8, lora_dropout 0 (AnimateDiff-MotionDirector's), temporal_target AnimateDiff motion module",
        "about 15 min (estimate)"),
    "motiondirector_animatediff": (
        "Generates the new subject with the learned motion through AnimateDiff-Evolved's Load AnimateDiff LoRA → "
        "Apply AnimateDiff Model (motion_lora) → Use Evolved Sampling. Training and generation are two workflows: "
        "ADE's loader lists its LoRA folder when the prompt is queued, so one prompt cannot load the file it saves.",
        "the LoRA file (Load AnimateDiff LoRA) and the prompt", "the LoRA's strength 1; the same motion module and "
        "beta_schedule as the training", "about 1 min (estimate)"),
}


# The checkpoint each base model's workflows name (workflow_graphs.base_model), as their notes describe it.
CHECKPOINTS = {
    "sd15": "SD1.5 (Tune-A-Video was published with SD 1.4/1.5)",
    "sd15_full": "SD1.5 (AnimateDiff's v2 motion module is trained for it)",
    "sd21": "SD 2.1 base (TokenFlow's default)",
    "sdxl": "SDXL base 1.0",
}


def note(name: str) -> str:
    """The note a workflow carries for the artist: what it does, what to change first, what matters, how long
    it takes, and which other workflow must run first."""
    does, change, matters, time = ABOUT[name]
    text = f"{does}\nChange first: {change}.\nWhat matters: {matters}.\nTime on a GPU: {time}."
    producer = PRODUCERS.get(name)
    if producer is not None:
        what = "motion LoRAs" if producer.startswith("motiondirector") else "tuned model"
        text += (f"\nRun '{TITLES[producer]}' first (once): this workflow loads the {what} it saves; pick its "
                 "file in the loader node (the first save is numbered _00001_).")
    packs = other_packs(name)
    if packs:
        text += (f"\nNeeds the node pack {', '.join(packs)} (ComfyUI-Manager installs it); without it the frontend "
                 "lists its nodes as missing.")
    return f"{text}\nCheckpoint: {CHECKPOINTS[base_model(name)]}; when it is missing the frontend offers its download."


def base_model(name: str) -> str:
    """The base model a workflow's checkpoint is: ``sd15`` (most), or another one the demo must provide."""
    return next((m.BASE_MODELS[name] for m in MODULES if name in getattr(m, "BASE_MODELS", {})), "sd15")


def other_packs(name: str) -> tuple[str, ...]:
    """The other node packs (folder names, as in ../shared/third_party) a workflow and its producer need."""
    names = (name, PRODUCERS.get(name))
    return tuple(dict.fromkeys(pack for m in MODULES for n in names for pack in getattr(m, "PACKS", {}).get(n, ())))


def all_workflows() -> dict:
    return {name: build for module in MODULES for name, build in module.WORKFLOWS.items()}


def set_inputs(prompt: dict, **values) -> dict:
    """Set every widget input with one of these names, on every node that has it (links stay links)."""
    for node in prompt.values():
        for name, value in values.items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return prompt


def shrink(prompt: dict, frames: int, size: int, steps: int) -> dict:
    """Cut a full-size workflow to a CPU's size, the one way the demo and the tests both use.

    Every clip and latent batch gets ``frames`` frames of ``size``², every tuning, training, inversion and
    sampling run ``steps`` steps; what depends on those follows: an inversion keeps the levels of a ``steps``-step
    sampler (TokenFlow's 500 / keep 50 becomes steps / keep steps), keyframe chunks and context windows span at
    most half the clip (so windows and several keyframes still happen), the causal window at most the clip.
    """
    set_inputs(prompt, n_frames=frames, batch_size=frames, width=size, height=size, steps=steps)
    half = max(1, frames // 2)
    limits = {"keep_steps": steps, "keyframe_chunk_size": half, "context_length": half,
              "context_overlap": half // 2, "temporal_window": frames - 1}
    for node in prompt.values():
        for name, limit in limits.items():
            value = node["inputs"].get(name)
            if isinstance(value, int):
                node["inputs"][name] = min(value, limit)
    return prompt
