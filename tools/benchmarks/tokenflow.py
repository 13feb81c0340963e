"""TokenFlow correspondence + propagation: this pack's chunked kernel against a naive full similarity matrix.

One transformer block's work for a whole clip: the nearest-neighbour field of every frame's source tokens in its
chunk's and the previous chunk's keyframe, then the blended gather of the keyframes' self-attention outputs for
3 branches ([source; uncond; cond]). Naive = one frames x tokens x 2*tokens cosine matrix, as the official chunk
code builds per chunk, for all frames at once. Prints, for 16 and 32 frames side by side, peak CPU memory (torch
profiler allocation events) and time, and the ratios ours / naive. Both results are checked to agree (random
features have a few near-ties, where rounding may pick the other neighbour).
Usage: python tools/benchmarks/tokenflow.py [--tokens 2048] [--channels 320]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from video_edit.kernels.tokenflow import blend_weights, propagate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import peak_bytes, seconds  # noqa: E402

CHUNK, BRANCHES = 8, 3


def naive(source, keyframe_tokens, keyframe_outputs, chunk_size):
    """The spec, vectorised over all frames with one full similarity matrix."""
    frames, tokens, _ = source.shape
    chunk = torch.arange(frames) // chunk_size
    prev = (chunk - 1).clamp(min=0)
    src, keys = F.normalize(source, dim=-1), F.normalize(keyframe_tokens, dim=-1)
    sim = torch.einsum("fnc,fmc->fnm", src, torch.cat([keys[chunk], keys[prev]], 1))  # F x N x 2N
    own, other = sim[..., :tokens].argmax(-1), sim[..., tokens:].argmax(-1)
    outputs = rearrange(keyframe_outputs, "(b k) n d -> b k n d", b=BRANCHES)
    weight = blend_weights(frames, chunk_size).float()[:, None, None]
    out = weight * outputs[:, chunk[:, None], own] + (1 - weight) * outputs[:, prev[:, None], other]
    return rearrange(out, "b f n d -> (b f) n d")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per frame (2048 = a 32x64 latent)")
    parser.add_argument("--channels", type=int, default=320, help="token and output channels (SD1.5's first level)")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = {}
    for frames in (16, 32):
        keyframes = frames // CHUNK
        source = torch.randn(frames, args.tokens, args.channels)
        kf_tokens = torch.randn(keyframes, args.tokens, args.channels)
        kf_out = torch.randn(BRANCHES * keyframes, args.tokens, args.channels)
        ours_fn = lambda: propagate(source, kf_tokens, kf_out, CHUNK)  # noqa: E731
        naive_fn = lambda: naive(source, kf_tokens, kf_out, CHUNK)  # noqa: E731
        differ = ((ours_fn() - naive_fn()).abs().amax(-1) > 1e-4).float().mean().item()
        assert differ < 1e-3, f"{differ:.2%} of the tokens differ"  # only near-ties may pick another neighbour
        rows[frames] = {"ours_mem": peak_bytes(ours_fn), "naive_mem": peak_bytes(naive_fn),
                        "ours_s": seconds(ours_fn), "naive_s": seconds(naive_fn),
                        "output": BRANCHES * frames * args.tokens * args.channels * 4}
    print(f"TokenFlow correspondence + propagation, {args.tokens} tokens x {args.channels} channels, "
          f"chunk {CHUNK}, {BRANCHES} branches, fp32, {torch.get_num_threads()} threads\n")
    print(f"{'':28}{'16 frames':>14}{'32 frames':>14}")
    lines = [("output tensor (both)", lambda r: f"{r['output'] / 2**20:9.1f} MiB"),
             ("peak memory, ours", lambda r: f"{r['ours_mem'] / 2**20:9.1f} MiB"),
             ("peak memory, naive", lambda r: f"{r['naive_mem'] / 2**20:9.1f} MiB"),
             ("memory ratio ours/naive", lambda r: f"{r['ours_mem'] / r['naive_mem']:13.3f}"),
             ("time, ours", lambda r: f"{r['ours_s']:11.3f} s"),
             ("time, naive", lambda r: f"{r['naive_s']:11.3f} s"),
             ("time ratio ours/naive", lambda r: f"{r['ours_s'] / r['naive_s']:13.3f}")]
    for label, fmt in lines:
        print(f"{label:28}" + "".join(f"{fmt(rows[f]):>14}" for f in (16, 32)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
