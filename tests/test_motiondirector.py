"""MotionDirector through ComfyUI's real model objects (tiny SD1.5): the invariants of docs/design.md §4, LoRA
files, core parity."""

import math
import pickle
from types import SimpleNamespace

import pytest
import torch

FRAMES, H, W = 4, 8, 8
SPATIAL = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")
TEMPORAL = ("attn_temp.to_q", "attn_temp.to_k", "attn_temp.to_v", "attn_temp.to_out.0")
SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".alpha")


@pytest.fixture(scope="module")
def md(sd15, encode, denoise):
    from video_edit.nodes import inversion, motion_lora_io, motiondirector
    from video_edit.nodes.shared import video_unet

    model = sd15[0]
    conds = [encode(p) for p in ("a man is skiing", "a skier on a slope")]
    g = torch.Generator().manual_seed(0)
    video_a, video_b = torch.randn(FRAMES, 4, H, W, generator=g), torch.randn(FRAMES - 1, 4, H, W, generator=g)
    videos = motiondirector.add_video(motiondirector.add_video(None, {"samples": video_a}, conds[0]),
                                      {"samples": video_b}, conds[1])
    return SimpleNamespace(
        model=model, video_unet=video_unet, inversion=inversion, io=motion_lora_io, md=motiondirector, conds=conds,
        video_a=video_a, video_b=video_b, videos=videos, base=video_unet.inflate(model, frame_groupnorm=False),
        blocks=[path for _, path, _, _ in video_unet.iter_transformer_blocks(model.model.diffusion_model)],
        denoise=lambda m, x: denoise(m, x, conds[0]))


def train(md, model=None, **kwargs):
    settings = dict(steps=2, rank=8, learning_rate=1e-3, seed=0, spatial_mask_probability=0.0, gradient_checkpointing=False)
    settings.update(kwargs)
    return md.md.train_motion_director(md.base if model is None else model, md.videos, **settings)


@pytest.fixture(scope="module")
def trained(md, model_state):
    before = model_state(md.base)
    result = train(md)
    assert model_state(md.base) == before
    return result


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """models/loras and models/video_edit_motion_lora in a temporary directory."""
    import folder_paths

    paths = {}
    for folder in (md_io().SPATIAL_FOLDER, md_io().TEMPORAL_FOLDER):
        paths[folder] = tmp_path / folder
        paths[folder].mkdir()
        exts = folder_paths.folder_names_and_paths[folder][1]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, folder, ([str(paths[folder])], exts))
    return paths


def md_io():
    from video_edit.nodes import motion_lora_io

    return motion_lora_io


def test_target_sets_are_exactly_the_official_ones(md, trained):
    spatial, temporal, losses = trained
    assert len(md.blocks) == 7
    # one spatial set per training video (official single_spatial_lora False), each trained on its own video
    assert set(spatial) == {f"video{k}.diffusion_model.{b}.{n}{s}"
                            for k in range(2) for b in md.blocks for n in SPATIAL for s in SUFFIXES}
    assert set(temporal) == {f"{b}.{n}{s}" for b in md.blocks for n in TEMPORAL for s in SUFFIXES}
    assert not any(".attn2." in k for k in spatial)
    for tensors in (spatial, temporal):
        ups = [v for k, v in tensors.items() if k.endswith(".lora_up.weight")]
        assert all(v.shape[1] == 8 and v.abs().max() > 0 for v in ups)  # rank 8, every LoRA trained
        assert all(v.item() == 8.0 for k, v in tensors.items() if k.endswith(".alpha"))
    assert len(losses["spatial"]) == len(losses["temporal"]) == len(losses["loss"]) == 2
    assert all(math.isfinite(v) for v in losses["spatial"] + losses["temporal"])


def test_spatial_path_is_the_image_model(md):
    """One frame with the temporal layers bypassed is the 2D model, even with non-zero temporal layers and the
    frame-spanning GroupNorm (which alone would not be an identity at F = 1)."""
    g = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=g) * 0.2
             for k, v in md.video_unet.get_inflation(md.base).layers.state_dict().items()}
    inflated = md.video_unet.inflate(md.model, state, frame_groupnorm=True)
    frame = md.video_a[2:3]
    plain = md.denoise(md.model, frame)
    with md.video_unet.bypass_temporal():
        torch.testing.assert_close(md.denoise(inflated, frame), plain, rtol=1e-5, atol=1e-5)
    assert (md.denoise(inflated, frame) - plain).abs().max() > 1e-3


def test_the_temporal_step_never_changes_spatial_weights(md):
    spatial, temporal, losses = train(md, steps=1, spatial_mask_probability=1.0)
    assert all(torch.count_nonzero(v) == 0 for k, v in spatial.items() if k.endswith(".lora_up.weight"))
    # At step 1 only to_out's LoRA gets a gradient: the base temporal output projection starts at zero.
    assert all(v.abs().max() > 0 for k, v in temporal.items() if k.endswith("to_out.0.lora_up.weight"))
    assert all(math.isnan(v) for v in losses["spatial"])


def test_several_clips_of_different_lengths_and_a_single_clip(md):
    single = md.md.add_video(None, {"samples": md.video_b}, md.conds[1])
    spatial, temporal, losses = md.md.train_motion_director(md.base, single, steps=1, rank=4, seed=1)
    assert len(losses["temporal"]) == 1 and len(md.videos) == 2 and md.videos[1].samples.shape[0] == FRAMES - 1


def patched_weight(patcher, key, base):
    import comfy.lora

    return comfy.lora.calculate_weight(patcher.patches[key], base.float().clone(), key)


def test_strengths_are_independent_linear_and_zero_is_the_base(md, trained):
    from video_edit.kernels.lora import spatial_targets
    from video_edit.nodes.shared.video_unet import temporal_patcher

    spatial, temporal, _ = trained
    first_video = first_set(spatial)
    base_out = md.denoise(md.base, md.video_a)
    zero = md.io.apply_motion_lora(md.base, spatial, 0.0, temporal, 0.0)
    assert not zero.patches and not temporal_patcher(zero).patches
    assert torch.equal(md.denoise(zero, md.video_a), base_out)

    only_temporal = md.io.apply_motion_lora(md.base, spatial, 0.0, temporal, 1.0)
    assert not only_temporal.patches
    assert set(temporal_patcher(only_temporal).patches) == {f"{b}.{n}.weight" for b in md.blocks for n in TEMPORAL}
    only_spatial = md.io.apply_motion_lora(md.base, spatial, 1.0, temporal, 0.0)
    assert set(only_spatial.patches) == {f"diffusion_model.{b}.{n}.weight" for b in md.blocks for n in SPATIAL}
    assert not temporal_patcher(only_spatial).patches

    module = f"{md.blocks[0]}.attn1.to_q"
    key = f"diffusion_model.{module}.weight"
    w0 = spatial_targets(md.model.model.diffusion_model)[module].weight.detach()
    delta = first_video[f"diffusion_model.{module}.lora_up.weight"] @ \
        first_video[f"diffusion_model.{module}.lora_down.weight"]  # spatial_set 0 by default
    tkey = f"{md.blocks[-1]}.attn_temp.to_out.0.weight"
    t0 = md.video_unet.get_inflation(md.base).layers.state_dict()[tkey]
    tdelta = temporal[tkey.replace(".weight", ".lora_up.weight")] @ temporal[tkey.replace(".weight", ".lora_down.weight")]
    for s in (0.5, 1.0, -2.0):
        both = md.io.apply_motion_lora(md.base, spatial, s, temporal, 3 * s)
        torch.testing.assert_close(patched_weight(both, key, w0), w0.float() + s * delta, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(patched_weight(temporal_patcher(both), tkey, t0), t0.float() + 3 * s * tdelta,
                                   rtol=1e-5, atol=1e-6)
    assert (md.denoise(only_temporal, md.video_a) - base_out).abs().max() > 1e-5
    assert torch.equal(md.denoise(md.base, md.video_a), base_out)  # the input MODEL still gives the base output


def first_set(spatial: dict) -> dict:
    return {k.removeprefix("video0."): v for k, v in spatial.items() if k.startswith("video0.")}


def test_save_then_load_is_bit_identical(md, trained, folders):
    spatial, temporal, _ = trained
    out = md.io.SaveMotionLoRA.execute(spatial, temporal, "skiing").args
    assert out == (str(folders["loras"] / "skiing_00001_spatial.safetensors"),
                   str(folders["video_edit_motion_lora"] / "skiing_00001_temporal.safetensors"))
    assert sorted(p.name for f in folders.values() for p in f.iterdir()) == ["skiing_00001_spatial.safetensors",
                                                                            "skiing_00001_temporal.safetensors"]
    read = md.io.read_lora_file("loras", "skiing_00001_spatial.safetensors", "spatial_file")
    assert read.keys() == spatial.keys() and all(torch.equal(read[k], spatial[k]) for k in spatial)
    loaded = md.io.LoadMotionLoRA.execute(md.base, "skiing_00001_spatial.safetensors", 0.5,
                                          "skiing_00001_temporal.safetensors", 1.0).args[0]
    applied = md.io.apply_motion_lora(md.base, spatial, 0.5, temporal, 1.0)
    assert torch.equal(md.denoise(loaded, md.video_a), md.denoise(applied, md.video_a))


def test_core_lora_loader_applies_the_spatial_file_identically(md, trained, folders):
    import comfy.model_management
    import comfy.sd
    import comfy.utils

    spatial, temporal, _ = train(md, spatial_sets="shared")  # one shared set: a standard LoRA file
    assert not any(k.startswith("video") for k in spatial)
    spatial_path, _ = md.io.save_motion_lora(spatial, temporal, "core")
    comfy.model_management.unload_all_models()  # core's key map reads the live module tree
    core, _ = comfy.sd.load_lora_for_models(md.model, None, comfy.utils.load_torch_file(spatial_path), 0.7, 0)
    ours = md.io.LoadMotionLoRA.execute(md.model, "core_00001_spatial.safetensors", 0.7, "none", 1.0).args[0]
    assert set(core.patches) == set(ours.patches)
    frame = md.video_a[:1]
    core_out, our_out = md.denoise(core, frame), md.denoise(ours, frame)
    assert torch.equal(core_out, our_out)
    assert (our_out - md.denoise(md.model, frame)).abs().max() > 1e-5


def test_training_lowers_both_losses(md):
    """Both losses on the training draws (clips, timesteps, noise, frames), before and after (lr ~0 = evaluation)."""

    def losses(m):
        _, _, curve = train(md, model=m, steps=3, learning_rate=1e-12, seed=7, lora_dropout=0.0)
        return [sum(curve[name]) / 3 for name in ("spatial", "temporal")]

    spatial, temporal, _ = train(md, steps=3, learning_rate=1e-2, seed=7)
    before = losses(md.base)
    after = losses(md.io.apply_motion_lora(md.base, spatial, 1.0, temporal, 1.0))
    assert after[0] < 0.9 * before[0] and after[1] < 0.9 * before[1], (before, after)


def test_checkpoints_every_n_steps(md, folders):
    train(md, steps=2, rank=2, checkpoint_every=1, checkpoint_name="ck")
    names = sorted(p.name for f in folders.values() for p in f.iterdir())
    assert names == [f"ck_step{s:05d}_00001_{k}.safetensors" for s in (1, 2) for k in ("spatial", "temporal")]
    tensors = md.io.read_lora_file("video_edit_motion_lora", "ck_step00002_00001_temporal.safetensors", "temporal_file")
    md.io.apply_motion_lora(md.base, None, 0, tensors, 1.0)  # fits the model


class _Marker:
    """Unpickling this creates a file: proof that a loader unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_bad_inputs_fail_with_clear_messages(md, trained, folders, tmp_path):
    spatial, temporal, _ = trained
    with pytest.raises(ValueError, match="latent: this video is 128x64 pixels, the videos already in clip_set are 64x64"):
        md.md.add_video(md.videos, {"samples": torch.zeros(4, 4, 8, 16)}, md.conds[0])
    with pytest.raises(ValueError, match="latent: a clip of at least 2 frames is needed, got 1"):
        md.md.add_video(None, {"samples": md.video_a[:1]}, md.conds[0])
    with pytest.raises(ValueError, match="model: MotionDirector trains LoRAs on the temporal layers"):
        md.md.train_motion_director(md.model, md.videos, steps=1)
    with pytest.raises(ValueError, match="model: temporal motion LoRAs live on the temporal layers"):
        md.io.apply_motion_lora(md.model, None, 0, temporal, 1.0)
    # The other kind of file, and a file made for another UNet (renamed module, other width): refused, not assigned.
    with pytest.raises(ValueError, match="spatial_lora: it does not fit this model"):
        md.io.apply_motion_lora(md.base, temporal, 1.0, None, 0)
    spatial = first_set(spatial)
    other = {k.replace("input_blocks.1.1", "input_blocks.2.1"): v for k, v in spatial.items()}
    with pytest.raises(ValueError, match="it does not fit this model .6 of its modules are not targets here"):
        md.io.apply_motion_lora(md.base, other, 1.0, None, 0)
    wider = dict(spatial)
    key = f"diffusion_model.{md.blocks[0]}.ff.net.2.lora_down.weight"
    wider[key] = torch.zeros(8, 2 * wider[key].shape[1])
    with pytest.raises(ValueError, match="ff.net.2 has up .* the model's Linear maps 1280 -> 320"):
        md.io.apply_motion_lora(md.base, wider, 1.0, None, 0)
    # A pickled file is refused without being opened.
    marker = tmp_path / "unpickled"
    (folders["video_edit_motion_lora"] / "motion.pt").write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ValueError, match="temporal_file: motion.pt is not a .safetensors file; pickled files .* refused"):
        md.io.LoadMotionLoRA.execute(md.base, "none", 0.0, "motion.pt", 1.0)
    assert not marker.exists()


def test_noise_prior_from_an_inversion(md):
    import comfy.sample

    inversion = md.inversion.ddim_invert(md.base, {"samples": md.video_a}, md.conds[0], steps=2)
    latent = {"samples": torch.zeros(FRAMES, 4, H, W)}
    plain = comfy.sample.prepare_noise(latent["samples"], 5)
    assert torch.equal(md.md.inversion_noise(md.base, inversion, 0.0, 5).generate_noise(latent), plain)
    sigma = float(inversion.sigmas[-1])
    inverted = inversion.latents[-1] * 0.18215 / math.sqrt(1 + sigma ** 2)
    torch.testing.assert_close(md.md.inversion_noise(md.base, inversion, 1.0, 5).generate_noise(latent), inverted)
    torch.testing.assert_close(md.md.inversion_noise(md.base, inversion, 0.25, 5).generate_noise(latent),
                               0.5 * inverted + math.sqrt(0.75) * plain)
    bigger = md.md.inversion_noise(md.base, inversion, 0.5, 5).generate_noise({"samples": torch.zeros(FRAMES, 4, 16, 16)})
    assert bigger.shape == (FRAMES, 4, 16, 16)
    with pytest.raises(ValueError, match="latent_image: 3 frames, the inverted video has 4"):
        md.md.inversion_noise(md.base, inversion, 0.5, 5).generate_noise({"samples": torch.zeros(3, 4, H, W)})
    fixed = md.inversion.ddim_invert(md.base, {"samples": md.video_a}, md.conds[0], steps=2, method="fixed_point")
    torch.testing.assert_close(md.md.inversion_noise(md.base, fixed, 1.0, 5).generate_noise(latent),
                               fixed.noisiest * 0.18215 / math.sqrt(1 + fixed.noisiest_sigma ** 2))


def test_training_leaves_no_gradient_on_the_base_weights(md, trained):
    """Only the LoRAs are trained: no weight of the UNet or of the temporal layers requires or holds a gradient."""
    weights = [*md.model.model.diffusion_model.parameters(), *md.video_unet.get_inflation(md.base).layers.parameters()]
    assert weights and not any(p.requires_grad or p.grad is not None for p in weights)


def test_both_passes_run_before_either_step(md, monkeypatch):
    """Official order (MotionDirector_train.py): the spatial and temporal forward passes of a step both see the
    LoRAs as they were before that step's updates."""
    sets, seen = [], []

    class RecordedLoRASet(md.md.LoRASet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sets.append(self)

    def predict(model_wrap, video, *args):
        spatial = sets[0]
        seen.append((video.shape[0], [p.detach().clone() for p in spatial.parameters()]))
        return original(model_wrap, video, *args)

    original = md.md.predict_eps
    monkeypatch.setattr(md.md, "LoRASet", RecordedLoRASet)
    monkeypatch.setattr(md.md, "predict_eps", predict)
    train(md, steps=2, learning_rate=1e-2, spatial_mask_probability=0.0)
    assert [frames > 1 for frames, _ in seen] == [False, True, False, True]  # spatial, temporal; twice
    for step in (0, 2):
        (_, spatial_pass), (_, temporal_pass) = seen[step], seen[step + 1]
        assert all(torch.equal(a, b) for a, b in zip(spatial_pass, temporal_pass))
    assert not all(torch.equal(a, b) for a, b in zip(seen[1][1], seen[2][1]))  # the spatial step did happen


def test_one_spatial_set_per_video_as_official(md, monkeypatch):
    """Official default (single_spatial_lora False): step k trains on video k mod N, with video k's spatial set
    alone active in both passes and alone updated (MotionDirector_train.py: loras[lora_idx + step].scale = 1,
    optimizer_spatial_list[step].step())."""
    seen = []

    def predict(model_wrap, video, *args):
        seen.append((video.shape[0], [s.scale for s in sampler_sets[-1]]))
        return original(model_wrap, video, *args)

    sampler_sets = []
    original_init = md.md.MotionDirectorSampler.__init__

    def init(self, videos, spatial, *args, **kwargs):
        sampler_sets.append(spatial)
        original_init(self, videos, spatial, *args, **kwargs)

    original = md.md.predict_eps
    monkeypatch.setattr(md.md.MotionDirectorSampler, "__init__", init)
    monkeypatch.setattr(md.md, "predict_eps", predict)
    one_step, _, _ = train(md, steps=1)
    three_steps, _, _ = train(md, steps=3)
    # video_a has 4 frames, video_b 3: spatial pass (1 frame), then temporal pass (the whole video), per step
    assert seen[:2] == [(1, [1.0, 0.0]), (FRAMES, [1.0, 0.0])]
    assert seen[2:] == [(1, [1.0, 0.0]), (FRAMES, [1.0, 0.0]), (1, [0.0, 1.0]), (FRAMES - 1, [0.0, 1.0]),
                        (1, [1.0, 0.0]), (FRAMES, [1.0, 0.0])]
    ups = [k for k in one_step if k.endswith(".lora_up.weight")]
    assert all(one_step[k].abs().max() > 0 for k in ups if k.startswith("video0."))
    assert all(torch.count_nonzero(one_step[k]) == 0 for k in ups if k.startswith("video1."))  # not yet trained
    assert all(three_steps[k].abs().max() > 0 for k in ups)


def test_a_shared_spatial_set_and_loading_a_chosen_set(md, trained, folders):
    from safetensors import safe_open

    spatial, temporal, _ = trained
    shared, _, _ = train(md, spatial_sets="shared")
    assert set(shared) == set(first_set(spatial))
    saved = md.io.SaveMotionLoRA.execute(spatial, temporal, "sets")
    assert saved.ui["text"][0].endswith("(spatial: set 0 of 2 (one per training video))")
    with safe_open(saved.args[0], "pt") as f:
        assert f.metadata()["spatial_sets"] == "2"
    second = {k.removeprefix("video1."): v for k, v in spatial.items() if k.startswith("video1.")}
    loaded = md.io.LoadMotionLoRA.execute(md.base, "sets_00001_spatial.safetensors", 1.0, "none", 1.0, 1)
    assert loaded.ui.as_dict()["text"] == ("spatial: set 1 of 2 (one per training video)",)
    direct = md.io.apply_motion_lora(md.base, second, 1.0, None, 0.0)
    assert torch.equal(md.denoise(loaded.args[0], md.video_a), md.denoise(direct, md.video_a))
    with pytest.raises(ValueError, match="spatial_set: spatial_file holds 2 sets, one per training video; use a "
                                         "spatial_set from 0 to 1"):
        md.io.LoadMotionLoRA.execute(md.base, "sets_00001_spatial.safetensors", 1.0, "none", 1.0, 2)
    with pytest.raises(ValueError, match="spatial_set: spatial_lora holds one shared set; use a spatial_set from 0 to 0"):
        md.io.apply_motion_lora(md.base, shared, 1.0, None, 0.0, spatial_set=1)
    with pytest.raises(ValueError, match="spatial_sets: 'per frame' is not one of one per video, shared"):
        train(md, spatial_sets="per frame")
