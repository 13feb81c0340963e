"""Benchmark: Tune-A-Video tuning step and cross-frame attention, ours vs a baseline, side by side in one run.

1. One-shot tuning step on the same model and clip, at two sizes: ours (inside ComfyUI) vs the straightforward
   formulation (the diffusers reference of tests/reference, no checkpointing, with Tune-A-Video's temporal layers
   and frame-spanning GroupNorm as ours inflates by default), the same trainable set (checked). Time: ours
   without gradient checkpointing against the reference (like with like), and ours with it; memory: the peak
   of one step above what lived before it, ours with checkpointing (the node's default) against the reference.
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
import functools
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


def ours_step(checkpoint: Path, frames: int, size: int, steps: int = 1, checkpointing: bool = True):
    """``steps`` tuning steps of ours in one VE_OneShotTune call, through ComfyUI (its own loader and sampler)."""
    from comfy_server import default_comfyui_path

    sys.path.insert(0, str(default_comfyui_path()))
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    args.use_pytorch_cross_attention = True  # the kernel ComfyUI picks on GPUs (on a CPU it defaults to sub-quadratic)
    import comfy.sd
    from video_edit.nodes import sparse_causal, tuning, video_unet

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a man is skiing"))
    video = sparse_causal.with_cross_frame_attention(video_unet.inflate(model), "sparse_causal")
    latent = {"samples": torch.randn(frames, 4, size // 8, size // 8)}
    tune = functools.partial(tuning.one_shot_tune, video, latent, cond, steps, 3e-5, 0,
                             gradient_checkpointing=checkpointing)
    layers = video_unet.require_inflated(video).layers
    queries = video_unet.query_weight_shapes(video.model.diffusion_model).values()
    tune.trainable = sum(shape.numel() for shape in queries) + sum(p.numel() for p in layers.tunable_parameters())
    tune.temporal = layers.state_dict()  # Tune-A-Video's initialisation: the reference starts from it too
    return tune


def ours_step_peak(checkpoint: Path, frames: int, size: int) -> float:
    """Peak bytes allocated during ours' second tuning step, above what lived before it (the tuning call's
    trainable copies and optimiser state exist by then, as the reference's do before its measured step)."""
    tune = ours_step(checkpoint, frames, size, 2)
    from video_edit.nodes.tuning import OneShotTuningSampler

    measured = {}
    original = OneShotTuningSampler.train_step

    def train_step(self, model_wrap, video, step, generator, extra_args):
        if step != 1:
            return original(self, model_wrap, video, step, generator, extra_args)
        result = {}
        measured["peak"] = peak_bytes(lambda: result.update(original(self, model_wrap, video, step, generator,
                                                                       extra_args)))
        return result

    OneShotTuningSampler.train_step = train_step
    try:
        tune()
    finally:
        OneShotTuningSampler.train_step = original
    return measured["peak"]


def reference_step(checkpoint: Path, frames: int, size: int, full_size: bool, temporal: dict):
    """One tuning step of the formulation as written: diffusers UNet + TAV's temporal layers (starting from
    ``temporal``, the state ours inflates with), sparse-causal attention and frame-spanning GroupNorm (as ours
    inflates by default), plain autograd."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ldm = {k: v for k, v in load_file(str(checkpoint)).items() if k.startswith("model.diffusion_model.")}
    reference = ReferenceTAV.from_ldm(ldm, tiny_unet_diffusers_config(full_size), temporal, mode="sparse_causal",
                                      frame_groupnorm=True).to(device)
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

    step.trainable = sum(p.numel() for p in trainable)
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

    # Ours runs as the node does, one call per tuning: a call's setup (clone, trainable copies, optimiser) is
    # excluded from the time by timing 1 and 4 steps, and from the memory by measuring its second step alone.
    ours = ours_step(checkpoint, args.frames, args.size)
    trained = ours.trainable, reference_step(checkpoint, 1, 8, args.full_size, ours.temporal).trainable
    if trained[0] != trained[1]:
        raise SystemExit(f"the trainable sets differ: ours {trained[0]} parameters, the reference {trained[1]}")
    print(f"\n1. one-shot tuning step, ours vs the reference (the same {trained[0] / 1e6:.1f} M trainable parameters: "
          "query projections and temporal attention)")
    print("   frames  size | time s/step: ours no ckpt / ref  ratio | ours ckpt | step peak MiB: ours ckpt / ref  ratio")
    for frames, size in ((args.frames, args.size), (2 * args.frames, 2 * args.size)):
        reference = reference_step(checkpoint, frames, size, args.full_size, ours.temporal)
        ref_s = seconds(reference, args.steps)
        ref_mb = peak_bytes(reference) / 2**20

        def per_step(checkpointing):
            one, four = (ours_step(checkpoint, frames, size, n, checkpointing) for n in (1, 4))
            return (seconds(four, args.steps) - seconds(one, args.steps)) / 3

        plain_s, ckpt_s = per_step(False), per_step(True)
        ours_mb = ours_step_peak(checkpoint, frames, size) / 2**20
        print(f"   {frames:6d} {size:5d} | {plain_s:8.3f} / {ref_s:6.3f}  {plain_s / ref_s:5.2f}x | {ckpt_s:9.3f} | "
              f"{ours_mb:9.1f} / {ref_mb:6.1f}  {ours_mb / ref_mb:5.2f}x")
    print("   (goals: time <= 1.0x, peak memory <= 0.6x; the trainable set's fp32 gradients, 44.5 MiB on the tiny "
          "UNet, are in both peaks)")

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
