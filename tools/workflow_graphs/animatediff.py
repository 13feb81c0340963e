"""MotionDirector on AnimateDiff-Evolved (ADE): learn the clips' motion as a LoRA of ADE's motion module, then
generate with it through ADE's own Load AnimateDiff LoRA.

Two workflows, not one: ADE's Load AnimateDiff LoRA lists models/animatediff_motion_lora/ when the prompt is
queued (ComfyUI checks a file choice against that list before anything runs), so a prompt cannot load the LoRA
its own training saves. ADE is another node pack (github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved), never part
of this one: both workflows need it installed.
"""

from comfy_execution.graph_utils import GraphBuilder

from .motiondirector import CHECKPOINT, NEW_PROMPT, clip_set_of, generate

MOTION_MODULE = "mm_sd_v15_v2.ckpt"  # AnimateDiff v2 for SD1.5 (guoyww/animatediff)
BETA_SCHEDULE = "sqrt_linear (AnimateDiff)"  # the schedule AnimateDiff's motion modules were trained with
LORA_NAME = "man_skiing_animatediff"

# Both need ADE's nodes, and its motion modules need SD1.5's real channel layout: the demo and the tests give them
# a random full-size SD1.5 ("sd15_full", tools/tiny_models.py), never the tiny one.
PACKS = dict.fromkeys(("motiondirector_animatediff_train", "motiondirector_animatediff"),
                      ("ComfyUI-AnimateDiff-Evolved",))
BASE_MODELS = dict.fromkeys(PACKS, "sd15_full")


def _with_motion_module(g: GraphBuilder, ckpt, motion_lora=None):
    """SD1.5 with ADE's motion module (and a motion LoRA on it), as ADE's Gen2 nodes put it on the MODEL."""
    motion = g.node("ADE_LoadAnimateDiffModel", model_name=MOTION_MODULE)
    lora = {"motion_lora": motion_lora.out(0)} if motion_lora is not None else {}
    applied = g.node("ADE_ApplyAnimateDiffModelSimple", motion_model=motion.out(0), **lora)
    return g.node("ADE_UseEvolvedSampling", model=ckpt.out(0), beta_schedule=BETA_SCHEDULE, m_models=applied.out(0))


def motiondirector_animatediff_train():
    """AnimateDiff-MotionDirector's recipe: the temporal LoRA on the motion module's attention, rank 8, no dropout."""
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    evolved = _with_motion_module(g, ckpt)
    train = g.node("VE_TrainMotionDirector", model=evolved.out(0), clip_set=clip_set_of(g, ckpt).out(0), steps=300,
                   rank=8, learning_rate=5e-4, weight_decay=1e-4, seed=0, gradient_checkpointing=True,
                   spatial_mask_probability=0.2, lora_dropout=0.0, checkpoint_every=0, checkpoint_name=LORA_NAME,
                   spatial_sets="one per video", temporal_target="AnimateDiff motion module")
    g.node("VE_SaveMotionLoRA", spatial_lora=train.out(0), temporal_lora=train.out(1), filename=LORA_NAME)
    g.node("VE_PlotLoss", loss=train.out(2))
    # The motion module alone on the new prompt: what motiondirector_animatediff's result is compared against.
    generate(g, ckpt, evolved.out(0), NEW_PROMPT, "video_edit/motiondirector_animatediff_without_lora")
    return g.finalize()


def motiondirector_animatediff():
    g = GraphBuilder(prefix="")
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    lora = g.node("ADE_AnimateDiffLoRALoader", name=f"{LORA_NAME}_00001_temporal.safetensors", strength=1.0)
    generate(g, ckpt, _with_motion_module(g, ckpt, lora).out(0), NEW_PROMPT, "video_edit/motiondirector_animatediff")
    return g.finalize()


WORKFLOWS = {
    "motiondirector_animatediff_train": motiondirector_animatediff_train,
    "motiondirector_animatediff": motiondirector_animatediff,
}
