"""Our attention patches chain with another pack's patch in the same slot (IPAdapter_plus style): the foreign patch
is wrapped and still called, and computes what it computed before; an earlier cross-frame patch of ours is
replaced; where composing is impossible the node refuses by name."""

import itertools
from collections import Counter

import pytest
import torch

FRAMES, H, W, STEPS = 4, 8, 8, 2


CALLS = Counter()  # by patch name: ModelPatcher.clone deep-copies patches, the copies count here too
NAMES = itertools.count()


class ForeignPatch:
    """Another pack's replace patch: plain attention through ComfyUI's kernel, counting its calls."""

    def __init__(self):
        self.name = next(NAMES)

    @property
    def calls(self) -> int:
        return CALLS[self.name]

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        CALLS[self.name] += 1
        return optimized_attention(q, k, v, extra_options["n_heads"])


@pytest.fixture(scope="module")
def setup(sd15):
    import comfy.sample
    import comfy.samplers
    from video_edit.kernels.unet_layout import iter_transformer_blocks

    model, clip, _ = sd15
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a man is skiing"))
    blocks = [key for key, *_ in iter_transformer_blocks(model.model.diffusion_model)]

    def with_foreign(m, kind: str):
        clone, patch = m.clone(), ForeignPatch()
        for key in blocks:
            getattr(clone, f"set_model_{kind}_replace")(patch, *key)
        return clone, patch

    def denoise(m, x, sigma=4.0):
        return comfy.sample.sample_custom(m, torch.zeros_like(x), 1.0, comfy.samplers.sampler_object("euler"),
                                          torch.tensor([sigma, 0.0]), cond, cond, x, disable_pbar=True)

    clip_latents = torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(0))
    return model, clip, cond, with_foreign, denoise, clip_latents


def test_cross_frame_attention_calls_the_foreign_patch(setup):
    from video_edit.nodes.sparse_causal import with_cross_frame_attention

    model, _, _, with_foreign, denoise, latents = setup
    foreign_model, foreign = with_foreign(model, "attn1")
    ours = denoise(with_cross_frame_attention(foreign_model, "sparse_causal"), latents)
    assert foreign.calls > 0
    torch.testing.assert_close(ours, denoise(with_cross_frame_attention(model, "sparse_causal"), latents))
    # a second cross-frame node replaces the first (no double gathering): first_frame then sparse_causal
    twice = with_cross_frame_attention(with_cross_frame_attention(model, "first_frame"), "sparse_causal")
    torch.testing.assert_close(denoise(twice, latents), denoise(with_cross_frame_attention(model, "sparse_causal"),
                                                                 latents), rtol=0, atol=0)


def test_narrow_blocks_keep_the_slot_as_it_was(setup):
    """With min_channels, the 320-channel blocks keep a foreign patch, and lose an earlier cross-frame patch of ours."""
    from video_edit.nodes.shared.attention_slots import replace_patch
    from video_edit.nodes.sparse_causal import CrossFrameAttentionPatch, with_cross_frame_attention

    model, _, _, with_foreign, denoise, latents = setup
    narrow, wide = ("input", 1, 0), ("input", 3, 0)  # 320 and 640 channels on the tiny UNet
    foreign_model, _ = with_foreign(model, "attn1")
    zero_shot = with_cross_frame_attention(foreign_model, "middle_frame", min_channels=640)
    assert isinstance(replace_patch(zero_shot, "attn1", narrow), ForeignPatch)
    assert isinstance(replace_patch(zero_shot, "attn1", wide), CrossFrameAttentionPatch)
    again = with_cross_frame_attention(with_cross_frame_attention(model, "sparse_causal"), "middle_frame",
                                       min_channels=640)
    assert replace_patch(again, "attn1", narrow) is None
    torch.testing.assert_close(denoise(again, latents), denoise(
        with_cross_frame_attention(model, "middle_frame", min_channels=640), latents), rtol=0, atol=0)


def test_tokenflow_calls_the_foreign_patch(setup):
    import comfy.sample
    from video_edit.nodes import inversion, tokenflow

    model, _, cond, with_foreign, _, latents = setup
    inverted = inversion.ddim_invert(model, {"samples": latents}, cond, STEPS)

    def edit(m):
        edited, start = tokenflow.tokenflow(m, inverted, cond, keyframe_chunk_size=2)
        return comfy.sample.sample(edited, torch.zeros_like(latents), STEPS, 7.5, "ddim", "ddim_uniform", cond, cond,
                                   start["samples"], disable_noise=True, seed=0, disable_pbar=True)

    foreign_model, foreign = with_foreign(model, "attn1")
    chained = edit(foreign_model)
    assert foreign.calls > 0
    torch.testing.assert_close(chained, edit(model))


def test_attention_capture_calls_the_foreign_patches_and_changes_nothing(setup):
    from video_edit.nodes import fatezero_capture, inversion

    model, _, cond, with_foreign, _, latents = setup
    foreign_model, foreign_self = with_foreign(model, "attn1")
    foreign_model, foreign_cross = with_foreign(foreign_model, "attn2")
    captured = inversion.ddim_invert(foreign_model, {"samples": latents}, cond, STEPS,
                                     fatezero_capture.AttentionCapture())
    assert foreign_self.calls > 0 and foreign_cross.calls > 0
    plain = inversion.ddim_invert(foreign_model, {"samples": latents}, cond, STEPS)
    assert torch.equal(captured.latents, plain.latents)


def test_fusion_refuses_a_foreign_cross_attention_patch_by_name(setup):
    from video_edit.nodes import fatezero, fatezero_capture, inversion

    model, clip, cond, with_foreign, _, latents = setup
    captured = inversion.ddim_invert(model, {"samples": latents}, cond, STEPS, fatezero_capture.AttentionCapture())
    foreign_model, _ = with_foreign(model, "attn2")
    with pytest.raises(ValueError, match="VE Attention Fusion after another pack's patch .*ForeignPatch .*attn2.*"
                                         "connect VE Attention Fusion first"):
        fatezero.attention_fusion(foreign_model, captured, clip, "a man is skiing", "a panda is skiing", "")
