"""Parity: our inflated UNet inside ComfyUI vs an independent Tune-A-Video formulation on diffusers (fp32)."""

import pytest
import torch
from reference.tav_diffusers import ReferenceTAV
from safetensors.torch import load_file
from tiny_models import tiny_unet_diffusers_config

FRAMES, TIMESTEP = 4, 500


@pytest.fixture(scope="module")
def setup(sd15, tiny_models):
    from video_edit.nodes import sparse_causal, video_unet

    model, clip, _ = sd15
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a jeep driving in the snow"))
    ldm = {k: v for k, v in load_file(str(tiny_models["checkpoint"])).items() if k.startswith("model.diffusion_model.")}
    layers = video_unet.TemporalLayers(video_unet.temporal_layer_specs(model.model.diffusion_model))
    generator = torch.Generator().manual_seed(3)
    temporal = {k: 0.05 * torch.randn(v.shape, generator=generator) + (1.0 if k.endswith("norm_temp.weight") else 0.0)
                for k, v in layers.state_dict().items()}
    return model, cond, ldm, temporal, video_unet, sparse_causal


@pytest.mark.parametrize("frame_groupnorm", [False, True])
@pytest.mark.parametrize("mode", ["sparse_causal", "middle_frame"])
def test_inflated_unet_matches_diffusers_reference(setup, frame_groupnorm, mode):
    import comfy.sample
    import comfy.samplers

    model, cond, ldm, temporal, video_unet, sparse_causal = setup
    ours = sparse_causal.with_cross_frame_attention(video_unet.inflate(model, temporal, frame_groupnorm), mode)
    sampling = model.get_model_object("model_sampling")
    sigma = float(sampling.sigma(torch.tensor(float(TIMESTEP))))
    latent = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(5))

    # ComfyUI: one Euler step to 0 returns the x0 prediction x - sigma * eps, in LATENT units.
    denoised = comfy.sample.sample_custom(ours, torch.zeros_like(latent), 1.0, comfy.samplers.sampler_object("euler"),
                                          torch.tensor([sigma, 0.0]), cond, cond, latent, disable_pbar=True)
    x = model.model.process_latent_in(latent)
    eps_ours = (x - model.model.process_latent_in(denoised)) / sigma

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
