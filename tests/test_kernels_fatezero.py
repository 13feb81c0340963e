"""FateZero kernels on their own (pure torch): docs/design.md §6: windows, P2P alignment, mask, latent blend, store."""

import pytest
import torch
from torch import nn

from video_edit.kernels.fatezero import (AttentionStore, BlockSpec, CrossAttentionEdit, PromptTokens, blend_by_mask,
                                         blend_mask, block_grids, blended_denoised, cross_alpha, global_alignment,
                                         latent_blend_active, mask_blocks, refinement_mapper, replacement_mapper,
                                         word_attention)
from video_edit.kernels.schedule import in_window

BOS, EOS = 100, 101


def prompt(*words_and_tokens):
    """``prompt(("a", [1]), ("jeep", [2, 3]))``."""
    words = [w for w, _ in words_and_tokens]
    return PromptTokens(words, [list(t) for _, t in words_and_tokens], BOS, EOS, length=12)


def test_replace_windows_follow_the_official_counts():
    assert [in_window(k, 50, 0.8) for k in range(50)] == [True] * 40 + [False] * 10  # self-attention replacement
    assert [cross_alpha(k, 50, 0.8) for k in range(50)] == [1.0] * 40 + [0.0] * 10  # int(51 * 0.8) = 40
    assert [cross_alpha(k, 10, 0.5) for k in range(10)] == [1.0] * 5 + [0.0] * 5  # int(11 * 0.5) = 5
    assert not any(in_window(k, 3, 0.0) or cross_alpha(k, 3, 0.0) for k in range(3))
    # SpatialBlender: counter = k + 1, blended while int(N * start) < counter < int(N * end)
    assert [latent_blend_active(k, 50, 0.2, 0.8) for k in range(50)] == [False] * 10 + [True] * 29 + [False] * 11
    assert [latent_blend_active(k, 3, 0.0, 1.0) for k in range(3)] == [True, True, False]
    assert all(latent_blend_active(k, 3, 0.0, 2.0) for k in range(3))


def test_global_alignment_marks_new_tokens_and_keeps_order():
    assert global_alignment([BOS, 1, 2, EOS], [BOS, 1, 7, 2, EOS]) == [0, 1, -1, 2, 3]
    assert global_alignment([BOS, 1, 2, EOS], [BOS, 1, 2, EOS]) == [0, 1, 2, 3]
    assert global_alignment([BOS, 1, 5, 2, EOS], [BOS, 1, 2, EOS]) == [0, 1, 3, 4]  # dropped source token


def test_refinement_mapper_and_alphas():
    source = prompt(("a", [1]), ("jeep", [2]))
    edit = prompt(("a", [1]), ("red", [7]), ("jeep", [2]))
    mapper, alphas = refinement_mapper(source, edit)
    assert mapper.tolist() == [0, 1, 0, 2, 3] + list(range(5, 12))
    assert alphas.tolist() == [1, 1, 0, 1, 1] + [1] * 7


def test_replacement_mapper_spreads_a_word_over_its_new_tokens():
    source = prompt(("a", [1]), ("silver", [4]), ("jeep", [2]))
    edit = prompt(("a", [1]), ("porsche", [8, 9]), ("jeep", [2]))
    m = replacement_mapper(source, edit)
    expected = torch.zeros(12, 12)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, 2] = expected[2, 3] = 0.5  # "silver" feeds both tokens of "porsche"
    for j in range(4, 12):  # after the last replaced word the official code maps j -> j, not the shifted i -> j
        expected[j, j] = 1
    torch.testing.assert_close(m, expected)
    # Before the last replaced word, unchanged words follow the shift (i -> j).
    two = replacement_mapper(prompt(("a", [1]), ("silver", [4]), ("old", [5]), ("jeep", [2])),
                             prompt(("a", [1]), ("porsche", [8, 9]), ("old", [5]), ("car", [3])))
    assert two[3, 4] == 1 and two[4, 5] == 1  # "old" shifted; "jeep" -> "car"
    assert two[6, 6] == 1 and two[5, 6] == 0  # then j -> j again
    with pytest.raises(ValueError, match="same word count"):
        replacement_mapper(source, prompt(("a", [1]), ("jeep", [2])))


def test_cross_attention_edit_replace_refine_reweight_and_alpha():
    g = torch.Generator().manual_seed(0)
    source = torch.rand(2, 3, 5, 12, generator=g).softmax(-1)
    edited = torch.rand(2, 3, 5, 12, generator=g).softmax(-1)
    same = CrossAttentionEdit.for_prompts(prompt(("a", [1]), ("silver", [4])), prompt(("a", [1]), ("red", [7])),
                                          {"red": 3.0})
    assert same.replace is not None
    expected = source.clone()
    expected[..., 2] *= 3.0
    torch.testing.assert_close(same(source, edited, 1.0), expected)
    torch.testing.assert_close(same(source, edited, 0.0), edited)
    # official: replace only when is_replace_controller AND equal lengths; the attribute configs set it false
    refined = CrossAttentionEdit.for_prompts(prompt(("a", [1]), ("silver", [4])), prompt(("a", [1]), ("red", [7])),
                                             {}, replace=False)
    assert refined.replace is None
    torch.testing.assert_close(refined(source, edited, 1.0)[..., 2], edited[..., 2])  # "red" keeps the edit's map
    torch.testing.assert_close(refined(source, edited, 1.0)[..., 1], source[..., 1])  # "a" reads the source's
    refine = CrossAttentionEdit.for_prompts(prompt(("a", [1]), ("jeep", [2])),
                                            prompt(("a", [1]), ("red", [7]), ("jeep", [2])), {})
    out = refine(source, edited, 1.0)
    torch.testing.assert_close(out[..., 2], edited[..., 2])  # the new word keeps the edited attention
    torch.testing.assert_close(out[..., 3], source[..., 2])  # "jeep" reads the source's "jeep" column
    with pytest.raises(ValueError, match="reweight: the word 'blue' is not in the edit prompt"):
        CrossAttentionEdit.for_prompts(prompt(("a", [1])), prompt(("a", [1])), {"blue": 2.0})


def test_prompt_longer_than_the_window_is_refused():
    with pytest.raises(ValueError, match="is 11 tokens; at most 10 fit"):
        prompt(*[(f"w{i}", [i]) for i in range(11)])


def mask_of(maps, grid, positions, size, threshold):
    return blend_mask([word_attention(m, positions) for m in maps], grid, size, threshold)


def test_blend_mask_matches_a_hand_computation():
    """2 frames, 2 layers x 2 heads, 2x2 grid, 4 tokens; blend tokens 1 and 2; resized to 4x4."""
    layer_a = torch.zeros(2, 2, 4, 4)
    layer_b = torch.zeros(2, 2, 4, 4)
    layer_a[0, :, 0, 1] = 0.8  # frame 0, top-left cell, token 1
    layer_b[0, :, 0, 2] = 0.4  # and token 2 in the other layer
    layer_a[1, 0, 3, 1] = 0.6  # frame 1, bottom-right cell, one head only
    layer_a[1, :, 2, 2] = 0.2  # frame 1, bottom-left cell
    mask = mask_of([layer_a, layer_b], (2, 2), [1, 2], (4, 4), threshold=0.5)
    # Frame 0: per-cell mean over 4 head-layers of the token sum = [[0.6, 0], [0, 0]]; the 3x3 max-pool
    # spreads 0.6 over the 2x2 grid, so every cell is 1 after normalising.
    assert mask[0].eq(1).all()
    # Frame 1: [[0, 0], [0.1, 0.15]] -> pooled 0.15 everywhere -> all 1 again; with threshold 2, nothing.
    assert mask[1].eq(1).all()
    assert mask_of([layer_a, layer_b], (2, 2), [1, 2], (4, 4), threshold=2.0).eq(0).all()
    # Without pooling effects (3x3 grid, far corners): only the strong corner survives the threshold.
    maps = torch.zeros(1, 1, 9, 3)
    maps[0, 0, 0, 1] = 1.0  # top-left
    maps[0, 0, 8, 1] = 0.4  # bottom-right
    mask = mask_of([maps], (3, 3), [1], (3, 3), threshold=0.5)
    assert mask[0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert mask_of([maps], (3, 3), [1], (6, 6), threshold=0.5)[0, :4, :4].eq(1).all()


def test_blended_denoised_lands_on_the_blend_after_an_euler_step():
    g = torch.Generator().manual_seed(0)
    x, denoised, source_next = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    mask = (torch.rand(2, 1, 3, 3, generator=g) > 0.5).float()
    for sigma, sigma_next in ((5.0, 3.0), (0.5, 0.0)):
        def euler(d):
            return x + (sigma_next - sigma) * (x - d) / sigma

        out = blended_denoised(x, denoised, source_next, sigma, sigma_next, mask)
        torch.testing.assert_close(euler(out), mask * euler(denoised) + (1 - mask) * source_next)


class Downsample(nn.Module):
    pass


class Upsample(nn.Module):
    pass


def test_block_grids_follow_down_and_up_sampling():
    unet = nn.Module()
    unet.input_blocks = nn.ModuleList([nn.Sequential(nn.Identity()), nn.Sequential(Downsample()),
                                       nn.Sequential(nn.Identity()), nn.Sequential(Downsample())])
    unet.output_blocks = nn.ModuleList([nn.Sequential(Upsample()), nn.Sequential(nn.Identity(), Upsample()),
                                        nn.Sequential(nn.Identity())])
    grids = block_grids(unet, 9, 8)
    assert [grids[("input", i)] for i in range(4)] == [(9, 8), (5, 4), (5, 4), (3, 2)]
    assert grids[("middle", 0)] == (3, 2)
    assert [grids[("output", i)] for i in range(3)] == [(3, 2), (5, 4), (9, 8)]


def spec(key, side, channels=8, heads=2):
    return BlockSpec(key, side, side, channels, heads)


def test_mask_blocks_are_the_level_nearest_16x16():
    sd15 = [spec(("input", 4, 0), 32), spec(("input", 7, 0), 16), spec(("middle", 0, 0), 8), spec(("output", 3, 0), 16)]
    assert [s.key for s in mask_blocks(sd15)] == [("input", 7, 0), ("output", 3, 0)]
    tiny = [spec(("input", 1, 0), 8), spec(("input", 3, 0), 4)]
    assert [s.key for s in mask_blocks(tiny)] == [("input", 1, 0)]


def test_store_levels_sizes_and_completeness():
    sigmas = torch.tensor([1e-4, 0.5, 2.0, 9.0])  # 3 inversion steps
    blocks = [spec(("input", 1, 0), 2), spec(("middle", 0, 0), 1)]
    store = AttentionStore(blocks, sigmas, frames=3, context=5)
    assert store.nbytes == AttentionStore.expected_bytes(blocks, 3, 3, 5) == 3 * 2 * 3 * (4 * (16 + 10) + 1 * (16 + 10))
    # The official inversion predicts level j's noise at sigmas[j]; editing step N - j evaluates there too.
    assert [store.stored_level(float(s)) for s in sigmas] == [None, 1, 2, 3]
    assert [store.level(float(s)) for s in sigmas[1:].flip(0)] == [3, 2, 1]
    assert [store.step_of(level) for level in (3, 2, 1)] == [0, 1, 2]
    with pytest.raises(ValueError, match="same step count as the inversion"):
        store.level(3.0)
    for level in (1, 2, 3):
        for block in blocks:
            store.put_self(block.key, level, torch.ones(3, block.tokens, 8), torch.ones(3, block.tokens, 8))
            if level < 3 or block.key != ("middle", 0, 0):
                store.put_cross(block.key, level, torch.ones(3, 2, block.tokens, 5))
    with pytest.raises(RuntimeError, match=r"level 3 of block \('middle', 0, 0\) was never recorded"):
        store.require_complete()


def test_official_layout_counts_every_map_in_fp32():
    block = spec(("input", 4, 0), 32, channels=640, heads=8)
    # The official 32x32 self map with 'mid' keys: (8 frames, 8 heads, 1024, 1024), 128 MiB in fp16.
    self_map = 8 * 8 * 1024 * 1024
    assert block.official_bytes_per_step(8, 77, key_frames=1) == 4 * (self_map + 8 * 8 * 1024 * 77)
    assert block.bytes_per_step(8, 77) == 2 * (2 * 8 * 1024 * 640 + 8 * 8 * 1024 * 77)


def test_blend_by_mask_takes_the_edit_inside_and_the_source_outside():
    edited, source = torch.full((2, 4, 3), 5.0), torch.full((2, 4, 3), -1.0)
    keep = torch.tensor([1.0, 0.0, 0.25, 1.0])[None, :, None]
    out = blend_by_mask(edited, source, keep)
    assert out[:, 0].eq(5).all() and out[:, 1].eq(-1).all() and torch.allclose(out[:, 2], torch.tensor(0.5))
