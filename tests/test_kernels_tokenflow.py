"""TokenFlow kernels on random tensors: keyframes, nearest neighbours, blending, propagation (docs/design.md §5)."""

import math

import pytest
import torch
import torch.nn.functional as F

from video_edit.kernels.attention import extended_attention, sdpa_attention
from video_edit.kernels.tokenflow import (blend_weights, copy_source_branch, keyframe_attention, keyframe_schedule,
                                          nearest_tokens, propagate, same_token_count, start_latent,
                                          with_source_branch)

HEADS = 2


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_one_keyframe_per_chunk_redrawn_every_step_from_the_seed():
    table = keyframe_schedule(num_frames=40, chunk_size=8, steps=10, seed=1)
    assert table.shape == (10, 5)
    chunk = torch.div(table, 8, rounding_mode="floor")
    assert torch.equal(chunk, torch.arange(5).expand(10, 5))  # exactly one keyframe inside every chunk
    assert len({tuple(row) for row in table.tolist()}) > 1  # redrawn from step to step
    assert torch.equal(table, keyframe_schedule(40, 8, 10, seed=1))
    assert not torch.equal(table, keyframe_schedule(40, 8, 10, seed=2))
    short = keyframe_schedule(num_frames=10, chunk_size=4, steps=200, seed=0)  # last chunk: frames 8, 9
    assert set(short[:, 2].tolist()) == {8, 9} and set(short[:, 0].tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("max_similarities", [1, 50, 2**24])
def test_nearest_neighbours_equal_brute_force(max_similarities):
    queries, keys = randn(7, 20, 16, seed=1), randn(3, 20, 16, seed=2)
    key_of_frame = torch.tensor([2, 2, 0, 1, 1, 0, 2])
    expected = torch.stack([
        (F.normalize(queries[f], dim=-1) @ F.normalize(keys[key_of_frame[f]], dim=-1).T).argmax(-1) for f in range(7)])
    assert torch.equal(nearest_tokens(queries, keys, key_of_frame, max_similarities), expected)


def test_blend_weights_follow_the_coded_formula():
    bs, frames = 8, 40
    w = blend_weights(frames, bs)
    for s in range(frames):
        i = s // bs
        d1, d2 = abs(s - (i * bs + bs // 2)), abs(s - ((i - 1) * bs + bs // 2))
        assert w[s].item() == pytest.approx(1.0 if i == 0 else 1 / (1 + math.exp(-d2 / (d1 + d2))), abs=1e-12)
    later = w[bs:]
    assert later.min() >= 0.5 and later.max() <= 1 / (1 + math.exp(-1)) + 1e-12
    # A frame of chunk i is never nearer to chunk i-1's centre than to its own (d2 >= d1), so the weight runs from
    # sigmoid(0.5) at the chunk's start to sigmoid(1) at its centre.
    assert later.min().item() == pytest.approx(1 / (1 + math.exp(-0.5))) and later.max().item() == pytest.approx(
        1 / (1 + math.exp(-1)))


def reference_propagation(source, kf_tokens, kf_out, bs):
    """TokenFlow's chunk pass written from the spec: per chunk, argmax cosine over each candidate keyframe."""
    frames, tokens, _ = source.shape
    branches = kf_out.shape[0] // kf_tokens.shape[0]
    kf_out = kf_out.view(branches, -1, tokens, kf_out.shape[-1])
    out = torch.empty(branches, frames, tokens, kf_out.shape[-1])
    for i in range(math.ceil(frames / bs)):
        for s in range(i * bs, min(frames, (i + 1) * bs)):
            def gather(k):
                sim = F.normalize(source[s], dim=-1) @ F.normalize(kf_tokens[k], dim=-1).T
                return kf_out[:, k, sim.argmax(-1)]
            if i == 0:
                out[:, s] = gather(0)
                continue
            d1, d2 = abs(s - (i * bs + bs // 2)), abs(s - ((i - 1) * bs + bs // 2))
            w = torch.sigmoid(torch.tensor(d2 / (d1 + d2)))
            out[:, s] = w * gather(i) + (1 - w) * gather(i - 1)
    return out.reshape(branches * frames, tokens, -1)


@pytest.mark.parametrize("frames,bs", [(12, 4), (10, 4), (5, 5), (6, 1)])
def test_propagation_matches_the_spec_reference(frames, bs):
    keyframes = math.ceil(frames / bs)
    source, kf_tokens = randn(frames, 16, 8, seed=3), randn(keyframes, 16, 8, seed=4)
    kf_out = randn(3 * keyframes, 16, 6, seed=5)
    got = propagate(source, kf_tokens, kf_out, bs, max_similarities=40)
    torch.testing.assert_close(got, reference_propagation(source, kf_tokens, kf_out, bs), rtol=1e-5, atol=1e-6)


def test_identical_frames_propagate_the_keyframe_output():
    frame = randn(1, 16, 8, seed=6)
    kf_out = randn(3, 1, 16, 6, seed=7).repeat(1, 3, 1, 1).flatten(0, 1)  # 3 branches x 3 identical keyframes
    out = propagate(frame.repeat(9, 1, 1), frame.repeat(3, 1, 1), kf_out, chunk_size=3)
    expected = kf_out.view(3, 3, 16, 6)[:, :1].expand(3, 9, 16, 6).reshape(27, 16, 6)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_extended_attention_sees_all_keyframes_of_its_branch_and_the_source_only_itself():
    q, k, v = (randn(3 * 4, 5, 8, seed=s) for s in (8, 9, 10))  # source + 2 branches, 4 keyframes, 5 tokens
    out = keyframe_attention(q, k, v, HEADS, chunks=3)
    torch.testing.assert_close(out[:4], sdpa_attention(q[:4], k[:4], v[:4], HEADS))
    for branch in (1, 2):
        rows = slice(4 * branch, 4 * branch + 4)
        keys, values = (t[rows].reshape(1, 20, 8).expand(4, 20, 8) for t in (k, v))
        torch.testing.assert_close(out[rows], sdpa_attention(q[rows], keys, values, HEADS), rtol=1e-5, atol=1e-6)
    k2 = k.clone()
    k2[5] += 3 * randn(5, 8, seed=11)  # branch 1, keyframe 1
    moved = keyframe_attention(q, k2, v, HEADS, chunks=3)
    assert not torch.allclose(moved[4], out[4])  # another keyframe of that branch sees it
    torch.testing.assert_close(moved[:4], out[:4], rtol=0, atol=0)  # the source and the other branch do not
    torch.testing.assert_close(moved[8:], out[8:], rtol=0, atol=0)
    torch.testing.assert_close(extended_attention(q, k, v, HEADS, chunks=3)[4:], out[4:], rtol=0, atol=0)


def test_injection_copies_the_source_branch_inside_its_window():
    x = randn(3 * 2, 4, 3, 3, seed=12)
    injected = copy_source_branch(x, chunks=3)
    assert all(torch.equal(injected[2 * b:2 * b + 2], x[:2]) for b in range(3))


def test_the_source_branch_goes_first_and_every_branch_keeps_its_rows():
    frames, branches = 4, 2
    batch = torch.arange(branches * frames).float()[:, None]  # branch b, frame f -> b * frames + f
    source = 100 + torch.arange(frames).float()[:, None]
    rows = torch.tensor([0, 3])
    out = with_source_branch(batch, source, branches, rows)
    assert out.flatten().tolist() == [100, 103, 0, 3, 4, 7]


def test_contexts_of_different_lengths_are_repeated_to_a_common_count():
    a, b = torch.randn(1, 77, 8), torch.randn(1, 154, 8)
    ra, rb = same_token_count(a, b)
    assert ra.shape == rb.shape == (1, 154, 8) and torch.equal(ra[:, 77:], a) and torch.equal(rb, b)


def test_start_latent_is_the_official_add_noise_in_sigma_space():
    """add_noise(x0, eps, t0) = sqrt(a0) x0 + sqrt(1 - a0) eps in DDPM terms is x0 + sigma0 eps scaled by sqrt(a0)."""
    x0, eps = randn(2, 4, 3, 3, seed=13), randn(2, 4, 3, 3, seed=14)
    alpha_start, alpha_noisiest = 0.0047, 0.0028  # SD's alpha_cumprod at t = 981 and 999
    sigma = lambda a: math.sqrt((1 - a) / a)  # noqa: E731
    noisiest = x0 + sigma(alpha_noisiest) * eps  # the VE form of the noisiest inverted latent
    start = start_latent(x0, noisiest, sigma(alpha_noisiest), sigma(alpha_start))
    official = math.sqrt(alpha_start) * x0 + math.sqrt(1 - alpha_start) * eps
    torch.testing.assert_close(start * math.sqrt(alpha_start), official, rtol=1e-5, atol=1e-6)
