"""FateZero (capture, fusion, blend) on SDXL: the tiny SDXL checkpoint of tools/tiny_models.py (transformer depth 2
and 10 per block, no attention at the top level, added conditioning) with its own text encoders behind
CLIPTextEncode, 3 frames of 8x8 latents. The SD1.5 behaviour is tests/test_fatezero.py; this checks it holds at every
transformer index of SDXL's deep blocks."""

from types import SimpleNamespace

import pytest
import torch

FRAMES, H, W, STEPS = 3, 8, 8, 2
SOURCE, EDIT = "a silver jeep", "a red jeep"


@pytest.fixture(scope="module")
def fz(sdxl_checkpoint, sdxl_encode):
    import comfy.sample
    from video_edit.kernels.unet_layout import iter_transformer_blocks
    from video_edit.nodes import fatezero, fatezero_capture, inversion

    model, clip, _ = sdxl_checkpoint

    def edit(m, start, prompt=EDIT):
        """KSampler Advanced as the workflows use it: ddim, ddim_uniform, no added noise, CFG 7.5."""
        return comfy.sample.sample(m, torch.zeros_like(start), STEPS, 7.5, "ddim", "ddim_uniform", sdxl_encode(prompt),
                                   sdxl_encode(""), start, disable_noise=True, disable_pbar=True, seed=0)

    latent = {"samples": torch.randn(FRAMES, 4, H, W, generator=torch.Generator().manual_seed(0))}
    captured = inversion.ddim_invert(model, latent, sdxl_encode(SOURCE), STEPS, fatezero_capture.AttentionCapture())
    return SimpleNamespace(model=model, clip=clip, edit=edit, fuse=fatezero.attention_fusion, fatezero=fatezero,
                           latent=latent, captured=captured, store=captured.captures["attention"],
                           keys=[key for key, *_ in iter_transformer_blocks(model.model.diffusion_model)])


def test_the_checkpoint_is_sdxl_with_deep_blocks(fz):
    from video_edit.nodes.shared.inputs import unet_family

    assert unet_family(fz.model) == "SDXL"
    assert {key[2] for key in fz.keys} == set(range(10)) and not any(key[:2] == ("input", 1) for key in fz.keys)


def test_capture_stores_every_transformer_index(fz):
    """8x8 latents: every block is under the token threshold, so each of the deep blocks' transformers has maps of
    its own (the maps of two transformers of one block differ)."""
    assert set(fz.store.blocks) == set(fz.keys)
    for level in range(1, STEPS + 1):
        for key in (("input", 4, 1), ("middle", 0, 1), ("input", 7, 9)):
            tokens = fz.store.blocks[key].height * fz.store.blocks[key].width
            assert fz.store.read("queries", key, level).shape == (FRAMES, tokens, 320)
            cross = fz.store.read("cross", key, level)
            assert cross.shape == (FRAMES, 5, tokens, 77)  # 320 channels / 64-channel heads
            sums = cross.float().sum(-1)
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=2e-3, rtol=0)
    assert not torch.equal(fz.store.read("cross", ("input", 7, 0), 1), fz.store.read("cross", ("input", 7, 9), 1))


def test_fusion_patches_every_transformer_and_changes_the_edit(fz):
    start = fz.captured.noisiest
    plain = fz.edit(fz.model, start)
    off, _ = fz.fuse(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "", self_replace=0.0, cross_replace=0.0)
    torch.testing.assert_close(fz.edit(off, start), plain, rtol=1e-5, atol=1e-5)
    fused, _ = fz.fuse(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "", self_replace=1.0, cross_replace=1.0)
    replaced = fused.model_options["transformer_options"]["patches_replace"]
    for kind, patch_class in (("attn1", fz.fatezero.SelfAttentionFusion), ("attn2", fz.fatezero.CrossAttentionFusion)):
        assert set(replaced[kind]) == set(fz.keys)
        assert all(type(replaced[kind][key]) is patch_class and replaced[kind][key].key == key
                   and replaced[kind][key].inner is None for key in fz.keys)
    out = fz.edit(fused, start)
    assert out.shape == (FRAMES, 4, H, W) and torch.isfinite(out).all()
    assert (out - plain).abs().max() > 1e-4


def test_threshold_2_blending_the_same_level_gives_back_the_source(fz):
    same, plan = fz.fuse(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep", mask_threshold=2.0, blend_start=0.0,
                         blend_end=2.0, blend_source="same level")
    torch.testing.assert_close(fz.edit(same, fz.captured.noisiest), fz.latent["samples"], rtol=1e-4, atol=1e-4)
    assert plan.preview_mask().shape == (FRAMES, 8 * H, 8 * W) and plan.preview_mask().eq(0).all()


def test_the_word_mask_keeps_the_unedited_region_of_the_source(fz):
    """The blend mask of 'jeep' from SDXL's cross-attention maps: outside it the last step lands on the source clip,
    inside it the edit differs. The random tiny model's maps are nearly flat, so a high threshold gives a mask that
    is neither empty nor full."""
    fused, plan = fz.fuse(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep", mask_threshold=0.95, blend_start=0.0,
                          blend_end=2.0, blend_source="same level")
    assert plan.source_positions == [3] and plan.mask_blocks
    masks = []
    latent_mask = plan.latent_mask
    plan.latent_mask = lambda level, size: masks.append(latent_mask(level, size)) or masks[-1]
    out = fz.edit(fused, fz.captured.noisiest)
    assert len(masks) == STEPS and masks[-1].shape == (FRAMES, H, W)
    kept = masks[-1].eq(0)[:, None].expand_as(out)
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(out[kept], fz.latent["samples"][kept], rtol=1e-4, atol=1e-4)
    assert (out[~kept] - fz.latent["samples"][~kept]).abs().max() > 1e-3


def test_the_node_returns_a_model_and_an_f_frame_mask(fz):
    output = fz.fatezero.AttentionFusion.execute(fz.model, fz.captured, fz.clip, SOURCE, EDIT, "jeep", 0.8, 0.8, 0.3,
                                                 "", 0.0, 0.8, "latents")
    model, mask = output.result
    assert model is not fz.model and mask.shape == (FRAMES, 8 * H, 8 * W) and mask.sum() > 0
    assert torch.isfinite(fz.edit(model, fz.captured.noisiest)).all()
