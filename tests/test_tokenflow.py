"""VE_TokenFlow through ComfyUI's real sampler stack on the tiny SD1.5: docs/design.md §5."""

from types import SimpleNamespace

import pytest
import torch

FRAMES, CHUNK, H, W, STEPS = 4, 2, 8, 8, 3


@pytest.fixture(scope="module")
def tf(sd15, encode, denoise):
    import comfy.sample
    from video_edit.nodes import inversion, tokenflow

    model = sd15[0]
    source, edit, negative = encode("a man is skiing"), encode("a marble statue skiing"), encode("blurry")
    video = torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(0))
    inverted = inversion.ddim_invert(model, {"samples": video}, source, STEPS)

    def sample(m, latent, steps=STEPS):
        """KSampler Advanced with add_noise disable, ddim, ddim_uniform, cfg 7.5."""
        return comfy.sample.sample(m, torch.zeros_like(latent), steps, 7.5, "ddim", "ddim_uniform", edit, negative,
                                   latent, disable_noise=True, seed=0, disable_pbar=True)

    def edit_model(inverted_video=None, **options):
        options = {"keyframe_chunk_size": CHUNK, **options}
        return tokenflow.tokenflow(model, inverted_video or inverted, source, **options)

    return SimpleNamespace(
        model=model, tokenflow=tokenflow, inversion=inversion, source=source, edit=edit, negative=negative,
        video=video, inverted=inverted, sample=sample, edit_model=edit_model,
        denoise=lambda m, x: denoise(m, x, edit, negative, cfg=7.5))


def test_input_model_is_unchanged_and_the_injection_leaves(tf, model_state):
    import comfy.model_management

    before, plain = model_state(tf.model), tf.denoise(tf.model, tf.video)
    model, start = tf.edit_model()
    tf.sample(model, start["samples"])
    assert model_state(tf.model) == before
    comfy.model_management.unload_all_models()
    assert not any(type(m).__name__ == "SourceFeatureInjection" for m in tf.model.model.diffusion_model.modules())
    torch.testing.assert_close(tf.denoise(tf.model, tf.video), plain, rtol=0, atol=0)


def test_start_latent_is_the_inverted_latent_at_the_first_step(tf):
    _, start = tf.edit_model()
    torch.testing.assert_close(start["samples"], tf.inverted.latents[-1], rtol=1e-5, atol=1e-5)


def test_more_inversion_steps_than_sampling_steps(tf):
    """The official recipe inverts in more steps than it samples (500 and 50; here 10 and 5, the same spacing
    rule): the inversion keeps the clip at the sampling levels, and the start latent is the clip re-noised to the
    first sampling timestep with the noise of the noisiest inverted latent (run_tokenflow_pnp.py), in DDPM terms."""
    from diffusers import DDIMScheduler

    full = tf.inversion.ddim_invert(tf.model, {"samples": tf.video}, tf.source, 10)
    kept = tf.inversion.ddim_invert(tf.model, {"samples": tf.video}, tf.source, 10, keep_steps=5)
    assert kept.steps == 5 and torch.equal(kept.latents, full.latents[[0, 1, 3, 5, 7, 9]])
    assert torch.equal(kept.noisiest, full.latents[-1]) and kept.noisiest_sigma == float(full.sigmas[-1])

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(5)
    alphas = scheduler.alphas_cumprod.double()
    latent = 0.18215 * tf.video.double()
    noisy = 0.18215 * kept.noisiest.double() * alphas[901].sqrt()  # the 10-step inversion's last timestep: 901
    eps = (noisy - alphas[901].sqrt() * latent) / (1 - alphas[901]).sqrt()
    official = scheduler.add_noise(latent, eps, scheduler.timesteps[:1])
    model, start = tf.edit_model(kept)
    start_vp = 0.18215 * start["samples"].double() / (1 + float(kept.sigmas[-1]) ** 2) ** 0.5
    assert int(scheduler.timesteps[0]) == 801
    torch.testing.assert_close(start_vp, official, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(tf.sample(model, start["samples"], steps=5)).all()  # the 5 sampling levels are all kept
    with pytest.raises(ValueError, match="keep_steps: a 3-step DDIM sampler visits noise levels that a 10-step"):
        tf.inversion.ddim_invert(tf.model, {"samples": tf.video}, tf.source, 10, keep_steps=3)


def test_a_fixed_point_inversion_serves_tokenflow(tf):
    fixed = tf.inversion.ddim_invert(tf.model, {"samples": tf.video}, tf.source, STEPS, method="fixed_point",
                                     iterations=2)
    model, start = tf.edit_model(fixed)
    torch.testing.assert_close(start["samples"], fixed.noisiest)
    assert torch.isfinite(tf.sample(model, start["samples"])).all()


def test_identical_frames_give_the_image_model_output(tf):
    """Extended attention over identical keyframes and propagation from them are plain self-attention."""
    still = tf.video[:1].repeat(FRAMES, 1, 1, 1)
    inverted = tf.inversion.ddim_invert(tf.model, {"samples": still}, tf.source, 2)
    model, start = tf.edit_model(inverted, pnp_attention_window=0.0, pnp_feature_window=0.0)
    plain = tf.sample(tf.model, start["samples"], steps=2)
    # Rounding only: cfg 7.5 amplifies float32 differences of the reordered sums to ~1e-4.
    torch.testing.assert_close(tf.sample(model, start["samples"], steps=2), plain, rtol=1e-3, atol=1e-3)
    injected, _ = tf.edit_model(inverted)  # plug-and-play injection does change the edit
    assert (tf.sample(injected, start["samples"], steps=2) - plain).abs().max() > 5e-2


def test_keyframes_and_injection_windows_per_step(tf, monkeypatch):
    """Record, per sampling step, the keyframes and which injections ran (conv: 4-D, q/k: 3-D tensors)."""
    module = tf.tokenflow
    calls = []
    copy_source = module.copy_source_branch

    def spy(x, chunks):
        step = module.TOKENFLOW_STEP.get()
        calls.append((step.step, "conv" if x.ndim == 4 else "qk", step.keyframe_pass, tuple(step.keyframes.tolist())))
        return copy_source(x, chunks)

    monkeypatch.setattr(module, "copy_source_branch", spy)
    model, start = tf.edit_model(pnp_attention_window=0.5, pnp_feature_window=0.8, seed=5)
    tf.sample(model, start["samples"])
    # int(3 * 0.8) = 2 conv steps, in both passes; int(3 * 0.5) = 1 q/k step, keyframe pass only, in the
    # decoder self-attention from output block 1 on (3 layers of the tiny UNet), q and k each.
    assert sorted({(s, kind, kf) for s, kind, kf, _ in calls}) == [
        (0, "conv", False), (0, "conv", True), (0, "qk", True), (1, "conv", False), (1, "conv", True)]
    assert sum(1 for s, kind, *_ in calls if kind == "qk") == 2 * 3
    keyframes = {s: kf for s, _, _, kf in calls}
    assert [list(keyframes[s]) for s in (0, 1)] == module.keyframe_schedule(FRAMES, CHUNK, STEPS, 5)[:2].tolist()
    assert all(kf[0] in range(0, 2) and kf[1] in range(2, 4) for kf in keyframes.values())


def test_pnp_layers_map_onto_sd15_and_the_tiny_unet(tf):
    """SD1.5: conv at output_blocks.4.0 (= up_blocks[1].resnets[1]), q/k in output blocks 4-11 (8 layers)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from video_edit.kernels.tokenflow import pnp_output_block, pnp_resnet

    sd15 = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2,
                     channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True, context_dim=768,
                     transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                     transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=False,
                     device="meta", operations=comfy.ops.disable_weight_init)
    assert pnp_output_block(sd15) == 4 and pnp_resnet(sd15) is sd15.output_blocks[4][0]
    tiny = tf.model.model.diffusion_model
    assert pnp_output_block(tiny) == 1 and pnp_resnet(tiny) is tiny.output_blocks[1][0]


def test_bad_inputs_fail_with_clear_messages(tf):
    with pytest.raises(ValueError, match="keyframe_chunk_size: 5 is larger than the clip \\(4 frames\\)"):
        tf.edit_model(keyframe_chunk_size=5)
    with pytest.raises(ValueError, match="keyframe_chunk_size: 0 is not a chunk size"):
        tf.edit_model(keyframe_chunk_size=0)
    model, start = tf.edit_model()
    with pytest.raises(ValueError, match="inversion: it was made from a clip of 4 frames of 8x8 latents, but the "
                                         "sampler's latent has 3 frames"):
        tf.sample(model, start["samples"][:3])
    with pytest.raises(ValueError, match="inversion: the sampler runs 2 steps .* Sample with steps=3"):
        tf.sample(model, start["samples"], steps=2)
