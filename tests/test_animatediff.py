"""Our methods on an AnimateDiff-Evolved (ADE) MODEL with a motion module: every UNet call whose batch is not the
whole clip gives ADE's motion module the call's frames, or turns it off on image-model calls (nodes/shared/animatediff.py).

ADE comes from ``../shared/third_party`` (a test fixture, never part of the pack); without it every test here is
skipped with the reason printed. ADE needs SD1.5's real channel layout: a random full-size SD1.5 UNet
and a random AnimateDiff v2 motion module built from ADE's own classes (both tools/tiny_models.py), both cached."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfy_server import ANIMATEDIFF_EVOLVED, ANIMATEDIFF_EVOLVED_MODULE
from conftest import CACHE_DIR
from test_attention_slots import load_pack

FRAMES, H, W = 4, 8, 8  # 64x64 pixels
@pytest.fixture(scope="module")
def ade(comfy_lib):
    """ADE's nodes on the full-size random SD1.5 UNet with the random motion module; a spy on one motion module
    records (rows, ADE's clip length, cond/uncond chunks, effect) of every call."""
    pack = load_pack(ANIMATEDIFF_EVOLVED, ANIMATEDIFF_EVOLVED_MODULE)
    import comfy.sd
    import folder_paths

    from tiny_models import full_size_sd15_checkpoint, random_animatediff_v2

    models_dir = CACHE_DIR / "tiny_models"
    motion_module = random_animatediff_v2(models_dir, pack)
    folder_paths.add_model_folder_path("animatediff_models", str(models_dir))
    base = comfy.sd.load_checkpoint_guess_config(str(full_size_sd15_checkpoint(models_dir)), output_vae=False,
                                                 output_clip=False)[0]
    nodes = pack.NODE_CLASS_MAPPINGS
    motion = nodes["ADE_LoadAnimateDiffModel"]().load_motion_model(motion_module.name)[0]
    calls = []
    spied = motion.model.down_blocks[0].motion_modules[0]

    def spy(module, args, kwargs):
        flags = kwargs["transformer_options"].get("cond_or_uncond") or [0]
        calls.append((args[0].shape[0], module.video_length, len(flags), module.effect))

    spied.register_forward_pre_hook(spy, with_kwargs=True)

    def evolved(m, with_motion=True, context_length=0, motion_lora=None):
        m_models = (nodes["ADE_ApplyAnimateDiffModelSimple"]().apply_motion_model(motion, motion_lora)[0]
                    if with_motion else None)
        context = (nodes["ADE_StandardStaticContextOptions"]().create_options(context_length, 0)[0]
                   if context_length else None)
        return nodes["ADE_UseEvolvedSampling"]().use_evolved_sampling(m, "sqrt_linear (AnimateDiff)", m_models, context)[0]

    generator = torch.Generator().manual_seed(0)
    video = torch.randn(2 * FRAMES, 4, H, W, generator=generator)
    cond = [[torch.randn(1, 77, 768, generator=generator), {}]]
    uncond = [[torch.randn(1, 77, 768, generator=generator), {}]]
    return SimpleNamespace(pack=pack, base=base, evolved=evolved, calls=calls, video=video, cond=cond, uncond=uncond)


def sample(ade, model, start, steps=1):
    import comfy.sample

    return comfy.sample.sample(model, torch.zeros_like(start), steps, 5.0, "ddim", "ddim_uniform", ade.cond,
                               ade.uncond, start, disable_noise=True, disable_pbar=True, seed=0)


def assert_frames_fit(calls):
    """Every motion-module call that ran (effect not 0) reshaped its rows into whole clips of ADE's length, one per
    cond/uncond chunk."""
    assert calls
    for rows, length, chunks, effect in calls:
        assert effect == 0.0 or rows == chunks * length, f"{rows} rows reshaped as clips of {length} frames for {chunks} chunks"


def tensors_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_dreamix_image_steps_run_without_the_motion_module(ade):
    """image_mix 1: every step is an image step; ADE's motion module is off, so the tuning equals ADE's without it."""
    from video_edit.nodes.tuning import one_shot_tune
    from video_edit.nodes.shared.video_unet import inflate

    inflated = inflate(ade.base)
    latent = {"samples": ade.video[:FRAMES]}
    ade.calls.clear()
    with_motion = one_shot_tune(ade.evolved(inflated), latent, ade.cond, 1, 1e-4, 3, False, image_mix=1.0)[0]
    assert ade.calls and all(effect == 0.0 for *_, effect in ade.calls)
    without = one_shot_tune(ade.evolved(inflated, with_motion=False), latent, ade.cond, 1, 1e-4, 3, False,
                            image_mix=1.0)[0]
    tuned = [m.get_attachment("video_edit_tuning") for m in (with_motion, without)]
    tensors_equal(tuned[0].query_deltas, tuned[1].query_deltas)
    assert any(d.abs().max() > 0 for d in tuned[0].query_deltas.values())


def test_motiondirector_spatial_path_runs_without_the_motion_module(ade):
    """The spatial LoRA (image path, one frame) equals ADE's without a motion module; the temporal path gives the
    motion module the whole clip."""
    from video_edit.nodes.motiondirector import TrainingVideo, train_motion_director
    from video_edit.nodes.shared.video_unet import inflate

    inflated = inflate(ade.base)
    videos = (TrainingVideo(ade.video[:FRAMES], ade.cond),)
    settings = dict(steps=1, rank=2, seed=0, gradient_checkpointing=False, spatial_mask_probability=0.0,
                    lora_dropout=0.0, checkpoint_name="")
    ade.calls.clear()
    spatial = train_motion_director(ade.evolved(inflated), videos, **settings)[0]
    assert {length for _, length, _, effect in ade.calls if effect != 0.0} == {FRAMES}
    assert_frames_fit(ade.calls)
    tensors_equal(spatial, train_motion_director(ade.evolved(inflated, with_motion=False), videos, **settings)[0])


def test_tokenflow_keyframe_pass_gives_the_motion_module_the_keyframes(ade):
    from video_edit.nodes import inversion, tokenflow

    evolved = ade.evolved(ade.base)
    inverted = inversion.ddim_invert(evolved, {"samples": ade.video[:FRAMES]}, ade.cond, 1)
    model, start = tokenflow.tokenflow(evolved, inverted, ade.cond, keyframe_chunk_size=2)
    ade.calls.clear()
    out = sample(ade, model, start["samples"])
    assert torch.isfinite(out).all()
    assert_frames_fit(ade.calls)
    assert {length for _, length, *_ in ade.calls} == {FRAMES // 2, FRAMES}  # keyframe pass, propagation pass


def test_context_windows_give_each_window_its_own_clip(ade):
    """VE Context Windows without overlap on the motion module: each window equals sampling its frames alone
    (cond and uncond never reshaped as one clip)."""
    from video_edit.nodes.context_windows import with_context_windows

    model = ade.evolved(ade.base)
    ade.calls.clear()
    windowed = sample(ade, with_context_windows(model, FRAMES, 0), ade.video)
    assert_frames_fit(ade.calls)
    for half in (slice(0, FRAMES), slice(FRAMES, 2 * FRAMES)):
        torch.testing.assert_close(windowed[half], sample(ade, model, ade.video[half]), rtol=0, atol=1e-5)


def test_a_short_last_window_runs(ade):
    from video_edit.kernels.windows import frame_windows
    from video_edit.nodes.context_windows import with_context_windows

    ade.calls.clear()
    out = sample(ade, with_context_windows(ade.evolved(ade.base), FRAMES, 1), ade.video)
    assert torch.isfinite(out).all()
    assert_frames_fit(ade.calls)
    lengths = {len(window) for window in frame_windows(len(ade.video), FRAMES, 1)}
    assert {length for _, length, *_ in ade.calls} == lengths and min(lengths) < FRAMES


@pytest.mark.parametrize("ours", ["sparse_causal", "context_windows"])
def test_ades_context_options_refuse_our_anchor_and_our_windows_by_name(ade, ours):
    from video_edit.nodes.context_windows import with_context_windows
    from video_edit.nodes.sparse_causal import with_cross_frame_attention

    node = {"sparse_causal": lambda m: with_cross_frame_attention(m, "sparse_causal"),
            "context_windows": lambda m: with_context_windows(m, FRAMES, 1)}[ours]
    name = {"sparse_causal": "VE Sparse-Causal Attention", "context_windows": "VE Context Windows"}[ours]
    with pytest.raises(ValueError, match=f"(?s){name}.*AnimateDiff-Evolved's context options"):
        sample(ade, ade.evolved(node(ade.base), context_length=FRAMES), ade.video)


def test_motiondirector_on_the_motion_module_makes_a_motion_lora_that_ade_loads(ade, monkeypatch, tmp_path):
    """temporal_target "AnimateDiff motion module": the LoRA trains on ADE's temporal attention projections, VE Save
    Motion LoRA writes ADE's format into models/animatediff_motion_lora, and ADE's Load AnimateDiff LoRA patches
    exactly up @ down into the motion module and changes the output."""
    import folder_paths

    from video_edit.nodes.motion_lora_io import SaveMotionLoRA
    from video_edit.nodes.motiondirector import TrainingVideo, train_motion_director

    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path / "loras")], {".safetensors"}))
    videos = (TrainingVideo(ade.video[:FRAMES], ade.cond),)
    ade.calls.clear()
    spatial, temporal, _ = train_motion_director(
        ade.evolved(ade.base), videos, steps=1, rank=2, learning_rate=1e-2, seed=0, gradient_checkpointing=False,
        spatial_mask_probability=1.0, lora_dropout=0.0, checkpoint_name="", temporal_target="AnimateDiff motion module")
    assert {length for _, length, *_ in ade.calls} == {FRAMES}
    assert temporal and all("temporal" in key and ".processor." in key for key in temporal)
    path = Path(SaveMotionLoRA.execute(spatial, temporal, "ade_motion").result[1])
    assert path.parent == tmp_path / "animatediff_motion_lora"

    nodes = ade.pack.NODE_CLASS_MAPPINGS
    lora = nodes["ADE_AnimateDiffLoRALoader"]().load_motion_lora(path.name, 1.0)[0]
    with_lora = ade.evolved(ade.base, motion_lora=lora)
    patches = with_lora.get_additional_models_with_key("ADE")[0].patches
    down = next(key for key in temporal if "to_q_lora.down" in key)
    model_key = down.replace("processor.", "").replace("_lora.down", "")
    torch.testing.assert_close(patches[model_key][0][1][0], temporal[down.replace(".down.", ".up.")] @ temporal[down])
    assert len(patches) == len(temporal) // 2
    start = ade.video[:FRAMES]
    assert not torch.equal(sample(ade, with_lora, start), sample(ade, ade.evolved(ade.base), start))


def test_one_shot_tune_can_tune_the_motion_module_queries_and_the_file_reloads_them(ade, tmp_path):
    """motion_module "tune its queries": the motion module's temporal query projections get deltas; VE Save Tuned
    keeps them, and the reloaded model samples exactly as the tuned one."""
    from video_edit.nodes.shared.animatediff import apply_tuned_weights
    from video_edit.nodes.tuned_io import load_tuned, save_tuned
    from video_edit.nodes.tuning import one_shot_tune
    from video_edit.nodes.shared.video_unet import inflate

    evolved = ade.evolved(inflate(ade.base))
    tuned_model = one_shot_tune(evolved, {"samples": ade.video[:FRAMES]}, ade.cond, 1, 1e-3, 3, False,
                                motion_module="tune its queries")[0]
    tuned = tuned_model.get_attachment("video_edit_tuning")
    assert tuned.motion_query_deltas and all(key.endswith(".to_q") for key in tuned.motion_query_deltas)
    assert all(delta.abs().max() > 0 for delta in tuned.motion_query_deltas.values())
    path = tmp_path / "tuned.safetensors"
    save_tuned(tuned, str(path))
    reloaded = apply_tuned_weights(evolved, load_tuned(str(path)))
    start = ade.video[:FRAMES]
    expected = sample(ade, tuned_model, start)
    torch.testing.assert_close(sample(ade, reloaded, start), expected, rtol=0, atol=0)
    assert not torch.equal(expected, sample(ade, apply_tuned_weights(evolved, replace(tuned, motion_query_deltas={})),
                                            start))
