"""A patched, inflated MODEL survives the deep clone ComfyUI's MultiGPU work units make of it for every extra device
(docs/design.md §9), emulated on the CPU the way ``ModelPatcher.deepclone_multigpu`` does it: the patched MODEL's
clone over a freshly loaded base model, every additional model rebuilt from its own ``cached_patcher_init``."""

import pytest
import torch

FRAMES, H, W = 4, 8, 8


def multigpu_deepclone(patched, fresh):
    """``patched`` cloned onto ``fresh``'s base model (what the loader's factory gives), its additional models
    rebuilt from their factories as deepclone_multigpu does (which refuses a model without one)."""
    clone = patched.clone()
    clone.model, clone.backup, clone.object_patches_backup = fresh.model, {}, {}
    for key, models in clone.additional_models.items():
        rebuilt = []
        for model in models:
            assert model.cached_patcher_init is not None, f"additional model {key} cannot be deep-cloned"
            factory, args = model.cached_patcher_init[:2]
            copy = model.clone()
            copy.model = factory(*args).model
            rebuilt.append(copy)
        clone.additional_models[key] = rebuilt
    return clone


def injected_temporal_layers(patched) -> list:
    from video_edit.nodes.shared.video_unet import InflatedTransformerBlock

    return [m.temporal for m in patched.model.diffusion_model.modules() if isinstance(m, InflatedTransformerBlock)]


@pytest.fixture(scope="module")
def tuned_model(sd15):
    """The tiny SD1.5 with a random tuning (query deltas as weight patches, non-zero temporal layers) and
    sparse-causal attention patches."""
    from video_edit.nodes import sparse_causal
    from video_edit.nodes.shared import video_unet

    inflated = video_unet.inflate(sd15[0])
    generator = torch.Generator().manual_seed(4)
    temporal = {k: v + 0.05 * torch.randn(v.shape, generator=generator)
                for k, v in video_unet.require_inflated(inflated).layers.state_dict().items()}
    deltas = {k: 0.05 * torch.randn(shape, generator=generator)
              for k, shape in video_unet.query_weight_shapes(sd15[0].model.diffusion_model).items()}
    tuned = video_unet.apply_tuned(sd15[0], video_unet.TunedWeights(deltas, temporal, frame_groupnorm=True))
    return sparse_causal.with_cross_frame_attention(tuned, "sparse_causal")


def test_a_deep_clone_keeps_patches_and_layers_and_gives_the_same_output(comfy_lib, tiny_models, tuned_model,
                                                                         encode, denoise):
    import comfy.model_management
    import comfy.sd

    fresh, _, _, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_models["checkpoint"]), output_vae=False,
                                                           output_clip=False)
    deep = multigpu_deepclone(tuned_model, fresh)
    video = torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(5))
    cond = encode("a man is skiing")
    expected = denoise(tuned_model, video, cond)
    original_layers = injected_temporal_layers(tuned_model)
    got = denoise(deep, video, cond)
    deep_layers = injected_temporal_layers(deep)
    assert len(deep_layers) == len(original_layers) > 0
    assert not {id(m) for m in deep_layers} & {id(m) for m in original_layers}  # its own copy, for its own device
    for mine, theirs in zip(deep_layers, original_layers):
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
            assert torch.equal(a, b)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    comfy.model_management.unload_all_models()
    unpatched = denoise(fresh, video, cond)
    assert (unpatched - expected).abs().max() > 1e-3  # the tuning and the patches made the difference
