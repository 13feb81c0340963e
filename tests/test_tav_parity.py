"""Parity: our inflated UNet inside ComfyUI vs an independent Tune-A-Video formulation on diffusers (fp32)."""

import pytest
import torch
from reference.tav_diffusers import ReferenceTAV, official_ddim_loop
from safetensors.torch import load_file
from tiny_models import tiny_unet_diffusers_config

FRAMES, TIMESTEP = 4, 500


@pytest.fixture(scope="module")
def setup(sd15, tiny_models):
    from video_edit.nodes import sparse_causal
    from video_edit.nodes.shared import video_unet

    model, clip, _ = sd15
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a jeep driving in the snow"))
    ldm = {k: v for k, v in load_file(str(tiny_models["checkpoint"])).items() if k.startswith("model.diffusion_model.")}
    layers = video_unet.TemporalLayers(video_unet.temporal_layer_specs(model.model.diffusion_model))
    generator = torch.Generator().manual_seed(3)
    temporal = {k: 0.05 * torch.randn(v.shape, generator=generator) + (1.0 if k.endswith("norm_temp.weight") else 0.0)
                for k, v in layers.state_dict().items()}
    return model, cond, ldm, temporal, video_unet, sparse_causal


def our_eps(model, ours, cond, latent, sigma):
    """ComfyUI's noise prediction for ``ours``: one Euler step to 0 returns the x0 prediction x - sigma * eps."""
    import comfy.sample
    import comfy.samplers

    denoised = comfy.sample.sample_custom(ours, torch.zeros_like(latent), 1.0, comfy.samplers.sampler_object("euler"),
                                          torch.tensor([sigma, 0.0]), cond, cond, latent, disable_pbar=True)
    x = model.model.process_latent_in(latent)
    return x, (x - model.model.process_latent_in(denoised)) / sigma


@pytest.mark.parametrize("frame_groupnorm", [False, True])
@pytest.mark.parametrize("mode", ["sparse_causal", "middle_frame"])
def test_inflated_unet_matches_diffusers_reference(setup, frame_groupnorm, mode):
    model, cond, ldm, temporal, video_unet, sparse_causal = setup
    ours = sparse_causal.with_cross_frame_attention(video_unet.inflate(model, temporal, frame_groupnorm), mode)
    sigma = float(model.get_model_object("model_sampling").sigma(torch.tensor(float(TIMESTEP))))
    latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    x, eps_ours = our_eps(model, ours, cond, latent, sigma)

    reference = ReferenceTAV.from_ldm(ldm, tiny_unet_diffusers_config(), temporal, mode=mode, frame_groupnorm=frame_groupnorm)
    with torch.no_grad():
        eps_ref = reference(x / (sigma ** 2 + 1) ** 0.5, TIMESTEP, cond[0][0])

    relative = (eps_ours - eps_ref).norm() / eps_ref.norm()
    print(f"parity {mode} frame_groupnorm={frame_groupnorm}: relative error {relative:.2e}")
    assert relative < 1e-4, f"relative error {relative:.2e}"
    # The temporal layers really act: the reference without them differs by far more than the tolerance.
    with torch.no_grad():
        plain = ReferenceTAV.from_ldm(ldm, tiny_unet_diffusers_config(), None, mode=mode, frame_groupnorm=frame_groupnorm)
        eps_plain = plain(x / (sigma ** 2 + 1) ** 0.5, TIMESTEP, cond[0][0])
    assert (eps_plain - eps_ref).norm() / eps_ref.norm() > 1e-3


def test_fatezero_zero_shot_model_matches_the_official_config(setup):
    """FateZero's zero-shot configs (least_sc_channel 640, SparseCausalAttention_index ['mid']): middle-frame
    attention in the 640-channel blocks only, per-frame in the 320-channel ones, frame-spanning GroupNorm, and
    zero-initialised temporal layers: VE Inflate UNet + VE Sparse-Causal Attention (middle_frame, min_channels 640)."""
    model, cond, ldm, _, video_unet, sparse_causal = setup
    sigma = float(model.get_model_object("model_sampling").sigma(torch.tensor(float(TIMESTEP))))
    latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    inflated = video_unet.inflate(model)
    x, zero_shot = our_eps(model, sparse_causal.with_cross_frame_attention(inflated, "middle_frame", min_channels=640),
                           cond, latent, sigma)
    _, everywhere = our_eps(model, sparse_causal.with_cross_frame_attention(inflated, "middle_frame"), cond, latent,
                            sigma)
    reference = ReferenceTAV.from_ldm(ldm, tiny_unet_diffusers_config(), None, mode="middle_frame",
                                      frame_groupnorm=True, least_sc_channel=640)
    with torch.no_grad():
        official = reference(x / (sigma ** 2 + 1) ** 0.5, TIMESTEP, cond[0][0])
    assert (zero_shot - official).norm() / official.norm() < 1e-4
    assert (everywhere - official).norm() / official.norm() > 1e-2  # the 320-channel blocks do matter
    with pytest.raises(ValueError, match="min_channels: no block has 1280 channels"):
        sparse_causal.with_cross_frame_attention(inflated, "middle_frame", min_channels=1280)


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_inversion_matches_the_official_loop(setup, steps):
    """VE_DDIMInvert's levels, taken back to diffusers' (VP) units, are the official inversion's (issue 12.1)."""
    from video_edit.nodes import inversion

    model, cond, ldm, temporal, video_unet, sparse_causal = setup
    ours_model = sparse_causal.with_cross_frame_attention(video_unet.inflate(model, temporal), "sparse_causal")
    latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    ours = inversion.ddim_invert(ours_model, {"samples": latent}, cond, steps)

    reference = ReferenceTAV.from_ldm(ldm, tiny_unet_diffusers_config(), temporal, mode="sparse_causal",
                                      frame_groupnorm=True)
    with torch.no_grad():
        official = official_ddim_loop(lambda x, t: reference(x, t, cond[0][0]), 0.18215 * latent, steps)

    assert ours.steps == steps and torch.equal(ours.noisiest, ours.latents[-1])
    errors = []
    for level, sigma, expected in zip(ours.latents, ours.sigmas.tolist(), official):
        vp = model.model.process_latent_in(level) / (1 + sigma ** 2) ** 0.5
        errors.append(((vp - expected).norm() / expected.norm()).item())
    print(f"inversion vs official ddim_loop, {steps} steps: worst level relative error {max(errors):.2e}")
    assert max(errors) < 1e-4
    torch.testing.assert_close(ours.source, latent)
