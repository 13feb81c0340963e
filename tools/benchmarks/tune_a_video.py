"""Benchmark: Tune-A-Video tuning step and cross-frame attention, ours vs a baseline, side by side in one run.

1. One-shot tuning step on the same model and clip: ours (inside ComfyUI, gradient checkpointing) vs the
   straightforward formulation (the diffusers reference of tests/reference, no checkpointing), same trainable set.
2. One self-attention at SD1.5's 64x64 level against frame count: sparse-causal as the node runs it (frames a
   few at a time, kernels/attention.py QUERY_TOKENS_PER_CALL) vs the whole batch gathered at once (the earlier
   kernel) vs full spatio-temporal attention (keys of all frames).

Peak memory: the GPU allocator's peak, or on a CPU the torch profiler's allocation events (tools/benchmarks/
measure.py). Prints times, memory and ratios. No GPU needed.

    python tools/benchmarks/tune_a_video.py [--frames 4] [--size 64] [--steps 2] [--full-size]

--full-size uses a random-weight UNet with the real SD1.5 shapes (slow on a CPU; meant for a GPU machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parents[1]
REPO_ROOT = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(TOOLS / "benchmarks"), str(REPO_ROOT / "tests")]

from measure import peak_bytes, seconds  # noqa: E402
from reference.tav_diffusers import ReferenceTAV  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny_models import full_size_sd15_checkpoint, tiny_sd15_checkpoint, tiny_unet_diffusers_config  # noqa: E402

from video_edit.kernels.attention import QUERY_TOKENS_PER_CALL, cross_frame_attention  # noqa: E402

MODELS = REPO_ROOT / ".cache" / "tiny_models"


def ours_step(checkpoint: Path, frames: int, size: int, steps: int = 1):
    """``steps`` tuning steps of ours in one VE_OneShotTune call, through ComfyUI (its own loader and sampler)."""
    from comfy_server import default_comfyui_path

    sys.path.insert(0, str(default_comfyui_path()))
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    import comfy.sd
    from video_edit.nodes import sparse_causal, tuning, video_unet

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a man is skiing"))
    video = sparse_causal.with_cross_frame_attention(video_unet.inflate(model), "sparse_causal")
    latent = {"samples": torch.randn(frames, 4, size // 8, size // 8)}
    return lambda: tuning.one_shot_tune(video, latent, cond, steps, 3e-5, 0, gradient_checkpointing=True)


def reference_step(checkpoint: Path, frames: int, size: int, full_size: bool):
    """One tuning step of the formulation as written: diffusers UNet + TAV attention, plain autograd."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ldm = {k: v for k, v in load_file(str(checkpoint)).items() if k.startswith("model.diffusion_model.")}
    reference = ReferenceTAV.from_ldm(ldm, tiny_unet_diffusers_config(full_size), None, mode="sparse_causal").to(device)
    reference.requires_grad_(False)
    trainable = [p for n, p in reference.named_parameters()
                 if n.endswith(("attn1.to_q.weight", "attn2.to_q.weight")) or ".attn_temp." in n]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=3e-5, weight_decay=1e-2)
    latents = torch.randn(frames, 4, size // 8, size // 8, device=device)
    text = torch.randn(1, 77, 768, device=device)

    def step():
        noise = torch.randn_like(latents)
        loss = torch.nn.functional.mse_loss(reference(latents + noise, 500, text), noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    return step


def attention_call(frames: int, mode: str, per_call: int | None = None):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(frames, 4096, 320, device=device) for _ in range(3))

    def call():
        with torch.no_grad():
            cross_frame_attention(q, k, v, heads=8, chunks=1, mode=mode, query_tokens_per_call=per_call)

    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="timed repeats (best of)")
    parser.add_argument("--full-size", action="store_true")
    args = parser.parse_args(argv)
    checkpoint = (full_size_sd15_checkpoint if args.full_size else tiny_sd15_checkpoint)(MODELS)
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; frames {args.frames}, "
          f"{args.size}x{args.size}, {'full-size' if args.full_size else 'tiny'} SD1.5 UNet")

    # Ours runs as the node does, one call per tuning; a call's setup (clone, optimiser) is excluded from the time
    # by timing 1 and 4 steps, but not from its peak memory (the reference's optimiser state exists before).
    one, four = ours_step(checkpoint, args.frames, args.size, 1), ours_step(checkpoint, args.frames, args.size, 4)
    reference = reference_step(checkpoint, args.frames, args.size, args.full_size)
    rows = {"ours (ComfyUI, checkpointing)": ((seconds(four, args.steps) - seconds(one, args.steps)) / 3,
                                              peak_bytes(one) / 2**20),
            "reference (no checkpointing)": (seconds(reference, args.steps), peak_bytes(reference) / 2**20)}
    (ours_s, ours_mb), (ref_s, ref_mb) = rows.values()
    print("\n1. one-shot tuning step             s/step   peak MiB")
    for name, (s, mb) in rows.items():
        print(f"   {name:32} {s:7.2f}  {mb:9.1f}")
    print(f"   ratio ours/reference: time {ours_s / ref_s:.2f}x, peak memory {ours_mb / ref_mb:.2f}x "
          "(goals: <= 1.0x, <= 0.6x)")

    print("\n2. one self-attention, 4096 tokens x 320 channels: peak MiB and seconds")
    print("   frames   sparse_causal MiB (ours / whole batch / ratio)   full MiB   "
          "sparse_causal s (ours / whole batch)   full s")
    for frames in (4, 8, 16, 32):
        ours, whole = attention_call(frames, "sparse_causal", QUERY_TOKENS_PER_CALL), attention_call(frames, "sparse_causal")
        full = attention_call(frames, "full")
        ours_mb, whole_mb, full_mb = (peak_bytes(call) / 2**20 for call in (ours, whole, full))
        ours_s, whole_s, full_s = (seconds(call, 1) for call in (ours, whole, full))
        print(f"   {frames:6d}   {ours_mb:9.0f} / {whole_mb:5.0f} / {ours_mb / whole_mb:5.2f}x{'':18}{full_mb:8.0f}   "
              f"{ours_s:15.2f} / {whole_s:5.2f}{'':13}{full_s:6.2f}")
    print("   (goals: ours <= 0.4x the whole-batch memory, time not slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
