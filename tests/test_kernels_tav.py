"""Tune-A-Video kernels on their own (pure torch): frame-spanning GroupNorm, the sparse-causal key set and the temporal attention (docs/design.md §3)."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from video_edit.kernels.attention import (HEAD_GROUPS_PER_CALL, bank_rows, cross_frame_attention, reference_frames,
                                         sdpa_attention)
from video_edit.kernels.inversion import Inversion, inversion_sigmas, invert
from video_edit.kernels.temporal import TemporalAttention, TemporalLayers, TemporalMask, frame_spanning_group_norm

HEADS = 4


def qkv(frames=5, chunks=2, tokens=6, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(chunks * frames, tokens, dim, generator=g) for _ in range(3)]


def plain_attention(q, k, v):
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=HEADS) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
    return rearrange(weights @ v, "b h n d -> b n (h d)")


def test_reference_frames_follow_the_official_rule():
    assert reference_frames(4, "sparse_causal").tolist() == [[0, 0], [0, 0], [0, 1], [0, 2]]
    assert reference_frames(3, "first_frame").tolist() == [[0], [0], [0]]
    assert reference_frames(4, "middle_frame").tolist() == [[1], [1], [1], [1]]
    assert reference_frames(3, "full").tolist() == [[0, 1, 2]] * 3
    with pytest.raises(ValueError, match="unknown cross-frame mode"):
        reference_frames(3, "sideways")


def test_sparse_causal_matches_a_per_frame_loop():
    """Each frame i attends to the concatenation [frame 0 ; frame max(i-1, 0)] of its own chunk."""
    q, k, v = qkv()
    out = cross_frame_attention(q, k, v, HEADS, chunks=2, mode="sparse_causal")
    for chunk in range(2):
        for i in range(5):
            row, first, prev = chunk * 5 + i, chunk * 5, chunk * 5 + max(i - 1, 0)
            keys = torch.cat([k[first], k[prev]])[None]
            values = torch.cat([v[first], v[prev]])[None]
            expected = plain_attention(q[row][None], keys, values)[0]
            torch.testing.assert_close(out[row], expected, rtol=1e-5, atol=1e-5)
    assert bank_rows(reference_frames(5, "sparse_causal"), 2).tolist()[5:7] == [[5, 5], [5, 5]]


def test_frame0_is_plain_self_attention_and_own_keys_never_matter():
    q, k, v = qkv(chunks=1)
    out = cross_frame_attention(q, k, v, HEADS, chunks=1, mode="sparse_causal")
    torch.testing.assert_close(out[0], plain_attention(q[:1], k[:1], v[:1])[0], rtol=1e-5, atol=1e-5)
    for i in range(1, 5):
        k2, v2 = k.clone(), v.clone()
        k2[i] += 3 * torch.randn_like(k2[i])
        v2[i] += 3 * torch.randn_like(v2[i])
        perturbed = cross_frame_attention(q, k2, v2, HEADS, chunks=1, mode="sparse_causal")
        torch.testing.assert_close(perturbed[i], out[i], rtol=0, atol=0)
        if i + 1 < 5:  # ... but the next frame, which attends to frame i, does change
            assert not torch.allclose(perturbed[i + 1], out[i + 1])


def test_identical_frames_make_every_mode_equal_plain_attention():
    q, k, v = (t[:1].repeat(6, 1, 1) for t in qkv(chunks=1))
    expected = plain_attention(q, k, v)
    for mode in ("sparse_causal", "first_frame", "middle_frame", "full"):
        torch.testing.assert_close(cross_frame_attention(q, k, v, HEADS, 2, mode), expected, rtol=1e-5, atol=1e-5)


def test_temporal_attention_starts_as_identity_and_mixes_only_frames():
    layer = TemporalAttention(dim=32, heads=HEADS, dim_head=8)
    x = torch.randn(2 * 5, 6, 32)
    torch.testing.assert_close(layer(x, chunks=2), x, rtol=0, atol=0)  # zero-initialised output, bias too
    torch.nn.init.normal_(layer.attn_temp.to_out[0].weight)
    out = layer(x, chunks=2)
    changed = x.clone()
    changed[7, 3] += 1.0  # chunk 1, frame 2, token 3
    delta = (layer(changed, chunks=2) - out).abs().sum(-1)
    assert delta[5:, 3].min() > 0  # every frame of chunk 1 sees it at token 3 (no mask, no causality)
    assert delta[:5].max() == 0 and delta[:, [0, 1, 2, 4, 5]].max() == 0  # never the other chunk or other tokens


def test_temporal_attention_has_no_positional_encoding():
    layer = TemporalAttention(dim=32, heads=HEADS, dim_head=8)
    torch.nn.init.normal_(layer.attn_temp.to_out[0].weight)
    x = torch.randn(5, 6, 32)
    order = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(layer(x[order], chunks=1), layer(x, chunks=1)[order], rtol=1e-5, atol=1e-5)


def test_temporal_layers_mirror_block_paths_and_exclude_norm_from_tuning():
    layers = TemporalLayers({"input_blocks.1.1.transformer_blocks.0": (32, 4, 8), "middle_block.1.transformer_blocks.0": (64, 8, 8)})
    keys = set(layers.state_dict())
    assert "input_blocks.1.1.transformer_blocks.0.attn_temp.to_out.0.bias" in keys
    assert "middle_block.1.transformer_blocks.0.norm_temp.weight" in keys
    tunable = {id(p) for p in layers.tunable_parameters()}
    named = dict(layers.named_parameters())
    assert {n for n, p in named.items() if id(p) in tunable} == {n for n in named if ".attn_temp." in n}
    assert len(tunable) == 2 * 5  # to_q, to_k, to_v, to_out.0.weight, to_out.0.bias per layer


def test_frame_spanning_group_norm_equals_5d_group_norm():
    x = torch.randn(2 * 3, 64, 4, 5)
    weight, bias = torch.randn(64), torch.randn(64)
    out = frame_spanning_group_norm(x, 32, weight, bias, 1e-6, chunks=2)
    five_d = rearrange(x, "(c f) ch h w -> c ch f h w", c=2)
    expected = rearrange(F.group_norm(five_d, 32, weight, bias, 1e-6), "c ch f h w -> (c f) ch h w")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    changed = x.clone()
    changed[2] += 1.0  # frame 2 of chunk 0 moves frame 0's statistics, not chunk 1's
    moved = frame_spanning_group_norm(changed, 32, weight, bias, 1e-6, chunks=2)
    assert not torch.allclose(moved[0], out[0]) and torch.equal(moved[3:], out[3:])


def test_inversion_sigmas_and_record():
    sampling = torch.tensor([14.6, 3.0, 0.5, 0.0])
    sigmas = inversion_sigmas(sampling, 0.03)
    assert sigmas == pytest.approx([0.03, 0.5, 3.0, 14.6])
    with pytest.raises(ValueError, match="must end at sigma 0"):
        inversion_sigmas(sampling[:-1], 0.03)
    latents = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 2, 4, 1, 1)
    record = Inversion(sigmas=torch.tensor(sigmas), latents=latents, noisiest=latents[-1], noisiest_sigma=14.6)
    assert record.steps == 3 and record.frames == 2
    assert record.index_of(2.9) == 2 and float(record.latent_at(14.0).max()) == 3.0
    torch.testing.assert_close(record.source, latents[0] / (1 + 0.03 ** 2) ** 0.5)


def test_inversion_step_is_the_official_next_step():
    """One step of ``invert`` is diffusers' ``next_step`` (Tune-A-Video util.py) written in VP terms."""
    alphas = torch.tensor([0.999, 0.9, 0.3], dtype=torch.float64)
    sigmas = ((1 - alphas) / alphas).sqrt().tolist()
    clean = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    weight = torch.randn(4, 4, dtype=torch.float64)

    def eps_model(vp_input, level):  # any noise predictor of the VP input and the level it is told
        return torch.einsum("oc,bchw->bohw", weight, vp_input).tanh() * (1 + level)

    seen = []

    def denoise(x, sigma):  # ComfyUI's x0 prediction for that predictor
        level = sigmas.index(sigma)
        seen.append(level)
        return x - sigma * eps_model(x * (1 + sigma ** 2) ** -0.5, level)

    ours = invert(denoise, clean, sigmas)
    vp = clean
    for t in range(2):  # official: eps at the target timestep t+1 on the current sample, alpha_0 for the clean clip
        eps = eps_model(vp, t + 1)
        x0 = (vp - (1 - alphas[t]).sqrt() * eps) / alphas[t].sqrt()
        vp = alphas[t + 1].sqrt() * x0 + (1 - alphas[t + 1]).sqrt() * eps
    assert seen == [1, 2]
    torch.testing.assert_close(ours * alphas[2].sqrt(), vp)


def test_fixed_point_inversion_is_what_the_euler_step_undoes():
    """Each fixed-point step solves x' = x + (s' - s) eps(x', s'), so ComfyUI's Euler/DDIM step back from x' at s'
    returns x; the official step (the first guess) does not."""
    sigmas = [0.0, 0.5, 2.0, 6.0]
    clean = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weight = 0.5 * torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def denoise(x, sigma):
        return x - sigma * torch.einsum("oc,bchw->bohw", weight, x * (1 + sigma ** 2) ** -0.5).tanh()

    def sample_back(x):
        for sigma, target in zip(sigmas[:0:-1], sigmas[-2::-1]):
            x = x + (target - sigma) * (x - denoise(x, sigma)) / sigma
        return x

    levels = []
    noisy = invert(denoise, clean, sigmas, record=lambda k, x: levels.append(x), iterations=25)
    assert len(levels) == 3 and torch.equal(levels[0], clean)
    torch.testing.assert_close(sample_back(noisy), clean, rtol=0, atol=1e-8)
    assert (sample_back(invert(denoise, clean, sigmas)) - clean).abs().max() > 1e-3


def test_causal_temporal_mask_hides_later_and_far_frames():
    """Make-Your-Video's causal mask: frame i's temporal attention output ignores frames after i, and with a window
    R the frames before i - R; without a mask (Tune-A-Video) every frame matters."""
    torch.manual_seed(0)
    frames, tokens, dim = 6, 3, 16

    def layer(mask):
        attention = TemporalAttention(dim, 2, 8, mask)
        torch.manual_seed(1)
        for p in attention.parameters():
            nn.init.normal_(p, std=0.3)
        return attention

    x = torch.randn(frames, tokens, dim)
    changed_late, changed_early = x.clone(), x.clone()
    changed_late[4:] += torch.randn(2, tokens, dim)  # not a constant shift, which the LayerNorm would remove
    changed_early[:1] += torch.randn(1, tokens, dim)
    causal, windowed, plain = layer(TemporalMask("causal")), layer(TemporalMask("causal", 2)), layer(TemporalMask())
    with torch.no_grad():
        assert torch.equal(causal(changed_late, 1)[:4], causal(x, 1)[:4])
        assert not torch.allclose(causal(changed_late, 1)[4:], causal(x, 1)[4:])
        assert torch.equal(windowed(changed_early, 1)[3:], windowed(x, 1)[3:])  # frame 3 sees frames 1..3
        assert not torch.allclose(windowed(changed_early, 1)[:3], windowed(x, 1)[:3])
        assert not torch.allclose(plain(changed_late, 1)[:4], plain(x, 1)[:4])
    assert TemporalMask().allowed(4) is None
    assert TemporalMask("none", 1).allowed(3).tolist() == [[True, True, False], [True, True, True], [False, True, True]]
    with pytest.raises(ValueError, match="temporal_mask: 'future' is not one of none, causal"):
        TemporalMask("future")


@pytest.mark.parametrize("mode", ["sparse_causal", "first_frame", "middle_frame"])
def test_frames_a_few_at_a_time_give_the_same_attention(mode):
    """query_tokens_per_call bounds what one call gathers (frames and heads a few at a time); the output is the
    whole-batch one, with cond/uncond chunks."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2 * 5, 16, 40, generator=g) for _ in range(3))  # 2 chunks of 5 frames, 16 tokens
    for heads in (5, 8):  # heads in groups of 1 and of 2
        whole = cross_frame_attention(q, k, v, heads=heads, chunks=2, mode=mode)
        for per_call in (16, 48, 1):  # 1 frame, 3 frames (uneven last call), and below one frame's tokens
            torch.testing.assert_close(cross_frame_attention(q, k, v, heads, 2, mode, query_tokens_per_call=per_call),
                                       whole, rtol=1e-6, atol=1e-6)


def test_attention_goes_in_one_call_while_autograd_records():
    """Chunking bounds inference memory only: under autograd every call's gathered keys/values are kept for the
    backward pass, so training runs one call (and one backward), and inference still goes a frame at a time."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(4, 16, 40, generator=g) for _ in range(3))
    calls = []

    def counting(*args):
        calls.append(args[0].shape[0])
        return sdpa_attention(*args)

    def run(*tensors):
        calls.clear()
        out = cross_frame_attention(*tensors, heads=8, chunks=1, mode="sparse_causal", attention=counting,
                                    query_tokens_per_call=16)
        return out, len(calls)

    inference, inference_calls = run(q, k, v)
    assert inference_calls == 4 * HEAD_GROUPS_PER_CALL
    trained = [t.clone().requires_grad_() for t in (q, k, v)]
    training, training_calls = run(*trained)
    assert training_calls == 1
    torch.testing.assert_close(training.detach(), inference, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert run(*trained)[1] == 4 * HEAD_GROUPS_PER_CALL


def test_training_gradients_match_the_official_gather():
    """Keys/values are gathered with index_select (a cheaper backward); the output and every gradient equal
    those of the official formulation, which gathers frame 0 and frame i-1 by advanced indexing, with chunks."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2 * 4, 16, 40, generator=g) for _ in range(3))  # 2 chunks of 4 frames
    grad_out = torch.randn(8, 16, 40, generator=g)

    def official(q, k, v):
        clips = rearrange(torch.stack([k, v]), "t (c f) n d -> t c f n d", c=2)
        former = (torch.arange(4) - 1).clamp(min=0)
        gathered = torch.cat([clips[:, :, [0] * 4], clips[:, :, former]], dim=3)  # Tune-A-Video's SC-Attn
        key, value = rearrange(gathered, "t c f n d -> t (c f) n d")
        return sdpa_attention(q, key, value, 8)

    def gradients(attention):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*leaves)
        out.backward(grad_out)
        return out.detach(), [t.grad for t in leaves]

    ours_out, ours_grads = gradients(lambda *t: cross_frame_attention(*t, heads=8, chunks=2, mode="sparse_causal",
                                                                      query_tokens_per_call=16))
    official_out, official_grads = gradients(official)
    torch.testing.assert_close(ours_out, official_out, rtol=1e-6, atol=1e-6)
    for ours, expected in zip(ours_grads, official_grads):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_extrapolated_fixed_point_step_costs_one_call_and_beats_the_official_step():
    """extrapolate with no refinement: one model call per step (as the official step), each on the latent
    extrapolated with the previous call's noise, so the Euler/DDIM sampler undoes it far more closely."""
    sigmas = [0.0] + torch.linspace(0.1, 6.0, 12).tolist()
    clean = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weight = 0.5 * torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    calls = []

    def denoise(x, sigma):
        calls.append(sigma)
        return x - sigma * torch.einsum("oc,bchw->bohw", weight, x * (1 + sigma ** 2) ** -0.5).tanh()

    def sample_back(x):
        for sigma, target in zip(sigmas[:0:-1], sigmas[-2::-1]):
            x = x + (target - sigma) * (x - denoise(x, sigma)) / sigma
        return x

    errors = {}
    for extrapolate in (False, True):
        calls.clear()
        noisy = invert(denoise, clean, sigmas, extrapolate=extrapolate)
        assert calls == sigmas[1:]  # one call per step, at the target level
        errors[extrapolate] = ((sample_back(noisy) - clean).norm() / clean.norm()).item()
    assert errors[True] < 0.2 * errors[False], errors
