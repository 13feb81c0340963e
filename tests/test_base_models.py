"""The methods on the other base models ComfyUI loads: SD2.x (512 eps and 768 v-prediction) and, for the
training-free methods, SDXL, on the tiny models of tools/tiny_models.py; the guard that refuses the rest by name."""

from types import SimpleNamespace

import pytest
import torch

from conftest import sdxl_conditioning

FRAMES, H, W, STEPS = 3, 8, 8, 2


def _video(seed: int = 0) -> torch.Tensor:
    return torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["sd21", "sd21_v", "sdxl"])
def base(request, sd21, sd21_v, sdxl):
    """One base model with what the tests feed it: the SD2.x text encoder (shared by both SD2.x UNets, 1024-wide
    context alike) or seeded SDXL CONDITIONING (its text encoders are not built)."""
    clip = sd21[1]
    if request.param == "sdxl":
        return SimpleNamespace(name="sdxl", model=sdxl, clip=None, cond=sdxl_conditioning(0),
                               edit=sdxl_conditioning(1))
    encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
    model = sd21[0] if request.param == "sd21" else sd21_v
    return SimpleNamespace(name=request.param, model=model, clip=clip, cond=encode("a man is skiing"),
                           edit=encode("a marble statue skiing"))


def sd2_only(base):
    if base.name == "sdxl":
        pytest.skip("a tuning-based method: SDXL is refused (test_tuning_nodes_refuse_sdxl_by_name)")


def sample_back(model, noisy, cond, steps=STEPS, cfg=1.0, negative=None):
    """KSampler Advanced as the workflows use it: ddim, ddim_uniform, no added noise."""
    import comfy.sample

    return comfy.sample.sample(model, torch.zeros_like(noisy), steps, cfg, "ddim", "ddim_uniform", cond,
                               negative or cond, noisy, disable_noise=True, disable_pbar=True, seed=0)


# ----- the guard --------------------------------------------------------------------------------------

def _fake_model(config_class):
    """A MODEL-shaped stand-in with ComfyUI's config class of a family the pack does not run (its DiT is not built)."""
    config = object.__new__(config_class)
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Identity(), model_config=config))


def test_the_guard_names_the_family_and_lists_the_supported(sd15, sd21, sd21_v, sdxl):
    import comfy.supported_models
    from video_edit.nodes.shared.inputs import TRAINING_FREE_FAMILIES, TUNING_FAMILIES, require_unet, unet_family

    assert [unet_family(m) for m in (sd15[0], sd21[0], sd21_v, sdxl)] == ["SD1.x", "SD2.x", "SD2.x", "SDXL"]
    for model in (sd15[0], sd21[0], sd21_v):
        assert require_unet(model) is model.model.diffusion_model
    assert require_unet(sdxl, TRAINING_FREE_FAMILIES) is sdxl.model.diffusion_model
    with pytest.raises(ValueError, match=r"model: this node supports SD1.x, SD2.x models .*got SDXL\. "):
        require_unet(sdxl, TUNING_FAMILIES)
    for family in ("Flux", "SD3", "SVD_img2vid", "WAN21_T2V", "HunyuanVideo"):
        with pytest.raises(ValueError, match=rf"supports SD1.x, SD2.x, SDXL models .*got {family}\. "):
            require_unet(_fake_model(getattr(comfy.supported_models, family)), TRAINING_FREE_FAMILIES)


def test_tuning_nodes_refuse_sdxl_by_name(sdxl):
    from video_edit.nodes import tuning
    from video_edit.nodes.shared import video_unet

    with pytest.raises(ValueError, match="got SDXL"):
        video_unet.inflate(sdxl)
    with pytest.raises(ValueError, match="got SDXL"):
        tuning.one_shot_tune(sdxl, {"samples": _video()}, sdxl_conditioning(0), steps=1, learning_rate=1e-3, seed=0)


# ----- inversion: eps and v-prediction ------------------------------------------------------------------

def test_v_prediction_is_read_through_comfys_model_sampling(sd21_v):
    """ComfyUI turns a v-model's output into x0 (model_sampling V_PREDICTION): the inversion's eps is then
    (x - x0) / sigma, the true noise: in VP terms eps = sqrt(alpha) v + sqrt(1 - alpha) x_t (diffusers' DDIM)."""
    import comfy.model_sampling

    sampling = sd21_v.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    sigma, x, v = torch.tensor([2.0]), torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    x0 = sampling.calculate_denoised(sigma, v, x)
    alpha = 1 / (1 + sigma ** 2)  # ComfyUI's x is x_t / sqrt(alpha)
    x_t = x * alpha.sqrt()
    eps_official = alpha.sqrt() * v + (1 - alpha).sqrt() * x_t
    torch.testing.assert_close((x - x0) / sigma, eps_official, rtol=1e-5, atol=1e-5)


def test_fixed_point_inversion_round_trips_closer_than_ddim(base):
    """Sampled back by the DDIM sampler, a fixed_point inversion returns far closer to the clip than the official
    one, under eps and v-prediction alike (random tiny weights: not exact, as on the tiny SD1.5)."""
    from video_edit.nodes import inversion

    source = _video() / 0.18215
    errors = {}
    for method in ("ddim", "fixed_point"):
        noisy = inversion.ddim_invert(base.model, {"samples": source}, base.cond, STEPS, method=method,
                                      iterations=3).noisiest
        assert torch.isfinite(noisy).all()
        errors[method] = ((sample_back(base.model, noisy, base.cond) - source).norm() / source.norm()).item()
    assert errors["fixed_point"] < 0.25 * errors["ddim"], errors


@pytest.mark.parametrize("name", ["sd21", "sd21_v"])
def test_ddim_step_is_the_official_step_on_the_raw_unet(name, sd21, sd21_v):
    """The first ``ddim`` step against the official formula (Tune-A-Video next_step, TokenFlow ddim_inversion) on
    the raw UNet called as diffusers calls it: the VP sample at the target timestep; a v output is turned into eps
    as diffusers' DDIM scheduler does for prediction_type v_prediction."""
    from video_edit.nodes import inversion

    model = sd21[0] if name == "sd21" else sd21_v
    cond = sd21[1].encode_from_tokens_scheduled(sd21[1].tokenize("a man is skiing"))
    video = _video()
    inverted = inversion.ddim_invert(model, {"samples": video}, cond, STEPS)
    sampling, base_model = model.get_model_object("model_sampling"), model.model
    sigma0, sigma1 = (float(s) for s in inverted.sigmas[:2])
    alpha0, alpha1 = 1 / (1 + sigma0 ** 2), 1 / (1 + sigma1 ** 2)
    sample = base_model.process_latent_in(video) * alpha0 ** 0.5
    timestep = sampling.timestep(torch.tensor([sigma1])).expand(FRAMES)
    with torch.no_grad():
        out = base_model.diffusion_model(sample, timestep, context=cond[0][0].expand(FRAMES, -1, -1)).float()
    eps = out if name == "sd21" else alpha1 ** 0.5 * out + (1 - alpha1) ** 0.5 * sample
    official = alpha1 ** 0.5 * (sample - (1 - alpha0) ** 0.5 * eps) / alpha0 ** 0.5 + (1 - alpha1) ** 0.5 * eps
    ours = base_model.process_latent_in(inverted.latents[1]) * alpha1 ** 0.5
    torch.testing.assert_close(ours, official, rtol=1e-3, atol=1e-3)  # v read as eps would be O(1) off


# ----- training-free methods ------------------------------------------------------------------------------

def test_sparse_causal_frame0_is_the_image_model(base):
    from video_edit.nodes import sparse_causal

    video = _video()
    plain = sample_back(base.model, video * (1 + 4) ** 0.5, base.cond, steps=1)
    patched = sample_back(sparse_causal.with_cross_frame_attention(base.model, "sparse_causal"),
                          video * (1 + 4) ** 0.5, base.cond, steps=1)
    torch.testing.assert_close(patched[0], plain[0], rtol=1e-4, atol=1e-4)
    assert (patched[1:] - plain[1:]).abs().max() > 1e-4


def test_tokenflow_edits_and_leaves_the_model(base, model_state):
    from video_edit.nodes import inversion, tokenflow

    inverted = inversion.ddim_invert(base.model, {"samples": _video()}, base.cond, STEPS)
    before = model_state(base.model)
    model, start = tokenflow.tokenflow(base.model, inverted, base.cond, keyframe_chunk_size=2)
    out = sample_back(model, start["samples"], base.edit, cfg=7.5, negative=base.cond)
    assert out.shape == (FRAMES, 4, H, W) and torch.isfinite(out).all()
    assert model_state(base.model) == before


def test_fatezero_capture_fusion_and_blend(base):
    """Mask threshold 2 with 'same level' blending everywhere gives back the source clip (as on SD1.5)."""
    if base.clip is None:
        pytest.skip("FateZero aligns prompts with the CLIP tokenizer: on SDXL it runs on the tiny SDXL checkpoint's "
                    "text encoders in test_fatezero_sdxl.py")
    from video_edit.nodes import fatezero, fatezero_capture, inversion

    video = _video()
    captured = inversion.ddim_invert(base.model, {"samples": video}, base.cond, STEPS,
                                     fatezero_capture.AttentionCapture())
    assert captured.captures["attention"].describe()
    same, _ = fatezero.attention_fusion(base.model, captured, base.clip, "a man is skiing", "a marble statue skiing",
                                        "man", mask_threshold=2.0, blend_start=0.0, blend_end=2.0,
                                        blend_source="same level")
    negative = base.clip.encode_from_tokens_scheduled(base.clip.tokenize(""))
    edited = sample_back(same, captured.noisiest, base.edit, cfg=7.5, negative=negative)
    torch.testing.assert_close(edited, video, rtol=1e-4, atol=1e-4)
    fused, _ = fatezero.attention_fusion(base.model, captured, base.clip, "a man is skiing", "a marble statue skiing")
    assert torch.isfinite(sample_back(fused, captured.noisiest, base.edit, cfg=7.5, negative=negative)).all()


# ----- tuning-based methods (SD1.x and SD2.x) -----------------------------------------------------------

def test_inflated_unet_starts_as_the_image_model_and_tunes(base):
    sd2_only(base)
    from video_edit.nodes import sparse_causal, tuning
    from video_edit.nodes.shared import video_unet

    video = _video() * 5 ** 0.5
    plain = sample_back(base.model, video, base.cond, steps=1)
    inflated = video_unet.inflate(base.model, frame_groupnorm=False)
    torch.testing.assert_close(sample_back(inflated, video, base.cond, steps=1), plain, rtol=1e-4, atol=1e-4)
    model, losses = tuning.one_shot_tune(sparse_causal.with_cross_frame_attention(inflated, "sparse_causal"),
                                         {"samples": _video()}, base.cond, steps=2, learning_rate=1e-3, seed=0,
                                         gradient_checkpointing=False, image_mix=0.5)
    assert len(losses["loss"]) == 2 and all(torch.isfinite(torch.tensor(losses["loss"])))
    assert (sample_back(model, video, base.cond, steps=1) - plain).abs().max() > 1e-5


def test_motion_director_trains_on_sd2(base):
    sd2_only(base)
    from video_edit.nodes import motiondirector
    from video_edit.nodes.shared import video_unet

    videos = motiondirector.add_video(None, {"samples": _video()}, base.cond)
    spatial, temporal, losses = motiondirector.train_motion_director(
        video_unet.inflate(base.model, frame_groupnorm=False), videos, steps=1, rank=4, learning_rate=1e-3, seed=0,
        gradient_checkpointing=False, spatial_mask_probability=0.0)
    assert spatial is not None and temporal is not None
    assert len(losses["spatial"]) == len(losses["temporal"]) == 1
    assert all(torch.isfinite(torch.tensor(losses["spatial"] + losses["temporal"])))
