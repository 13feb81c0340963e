"""The fast recipes (the *_fast workflows) against the official ones on the tiny SD1.5 (docs/nodes/tokenflow.md,
fatezero.md, tune_a_video.md): exact UNet call counts, the method's edit still runs on the fast inversion, and the
round trip (inversion sampled back with the inversion prompt, cfg 1) is at least as good as the official one's."""

import pytest
import torch

FRAMES, H, W = 4, 8, 8
SOURCE, EDIT = "a silver jeep driving down a road", "a red jeep driving down a road"


class UNetCalls:
    """Counts the diffusion model's forward calls inside the ``with`` block."""

    def __init__(self, model):
        self.unet, self.calls = model.model.diffusion_model, 0

    def __enter__(self):
        self.handle = self.unet.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def clip_latent():
    return torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(3)) / 0.18215


def sample(model, latent, steps, positive, negative=None, cfg=1.0):
    """KSampler Advanced: add_noise disable, ddim, ddim_uniform."""
    import comfy.sample

    return comfy.sample.sample(model, torch.zeros_like(latent), steps, cfg, "ddim", "ddim_uniform", positive,
                               negative or positive, latent, disable_noise=True, seed=0, disable_pbar=True)


def relative_error(x, reference):
    return ((x - reference).norm() / reference.norm()).item()


def test_tokenflow_fast_inverts_in_the_sampling_steps(sd15, encode, clip_latent):
    """Official: 10x the sampling steps of DDIM, keeping the sampling levels; fast: fixed_point at the sampling
    steps with no refinement, one UNet call per step. TokenFlow (keyframe and propagation passes, PnP windows)
    samples from either; the fast round trip is closer to the clip."""
    from video_edit.nodes import inversion, tokenflow

    model, source, steps = sd15[0], encode(SOURCE), 5
    recipes = {"official": dict(steps=10 * steps, keep_steps=steps), "fast": dict(steps=steps, method="fixed_point",
                                                                                 iterations=0)}
    errors = {}
    for name, recipe in recipes.items():
        with UNetCalls(model) as inverting:
            inverted = inversion.ddim_invert(model, {"samples": clip_latent}, source, **recipe)
        assert inverting.calls == recipe["steps"], name
        assert inverted.steps == steps, name
        edit_model, start = tokenflow.tokenflow(model, inverted, source, keyframe_chunk_size=2)
        with UNetCalls(model) as editing:
            edited = sample(edit_model, start["samples"], steps, encode(EDIT), encode(""), cfg=7.5)
        assert editing.calls == 2 * steps and torch.isfinite(edited).all(), name  # keyframe pass + all frames
        errors[name] = relative_error(sample(model, start["samples"], steps, source), clip_latent)
    assert errors["fast"] <= errors["official"], errors


@pytest.mark.parametrize("method", ["fatezero", "tune_a_video"])
def test_fast_recipe_inverts_and_samples_in_fewer_steps(sd15, encode, clip_latent, method):
    """Official: 5 DDIM steps sampled in 5; fast: 2 fixed-point steps of 2 UNet calls, sampled in 2 (the workflows'
    50 and 20, scaled). FateZero's maps are captured at the fast levels and fused when sampling at them (and
    refused at the official step count); the fast round trip is closer to the clip."""
    from video_edit.nodes import fatezero, fatezero_capture, inversion, sparse_causal
    from video_edit.nodes.shared import video_unet

    mode = "middle_frame" if method == "fatezero" else "sparse_causal"
    model = sparse_causal.with_cross_frame_attention(video_unet.inflate(sd15[0]), mode)
    source = encode(SOURCE if method == "fatezero" else "")
    capture = fatezero_capture.AttentionCapture() if method == "fatezero" else None
    recipes = {"official": dict(steps=5), "fast": dict(steps=2, method="fixed_point", iterations=1)}
    errors, inverted = {}, {}
    for name, recipe in recipes.items():
        with UNetCalls(model) as inverting:
            inverted[name] = inversion.ddim_invert(model, {"samples": clip_latent}, source, capture=capture, **recipe)
        assert inverting.calls == recipe["steps"] * (1 + recipe.get("iterations", 0)), name
        with UNetCalls(model) as sampling:
            back = sample(model, inverted[name].noisiest, recipe["steps"], source)
        assert sampling.calls == recipe["steps"], name
        errors[name] = relative_error(back, clip_latent)
    assert errors["fast"] <= errors["official"], errors
    if method == "fatezero":
        fused, _ = fatezero.attention_fusion(model, inverted["fast"], sd15[1], SOURCE, EDIT, "jeep", word_swap="refine")
        assert torch.isfinite(sample(fused, inverted["fast"].noisiest, 2, encode(EDIT), encode(""), 7.5)).all()
        with pytest.raises(ValueError, match="is not a step of the inversion"):
            sample(fused, inverted["fast"].noisiest, 5, encode(EDIT), encode(""), 7.5)
