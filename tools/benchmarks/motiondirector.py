"""MotionDirector training cost: dual-path LoRA training vs fully tuning the same layers vs a Tune-A-Video step.

Runs each configuration in its own process (clean peak-memory numbers) on the same clip and prints time per
step, peak memory and their ratios:
- ``lora``: VE_TrainMotionDirector's step (rank 32, spatial masking 0.2, gradient checkpointing);
- ``full``: the same dual-path step with every LoRA replaced by a full-rank trainable ΔW on the same Linears;
- ``tav``: VE_OneShotTune's single-path step (query projections + temporal layers).
Time per step = (time of 1 + N steps - time of 1 step) / N, so model loading is not counted. Peak memory is
torch.cuda.max_memory_allocated on a GPU, or the process's peak RSS above its RSS before training on the CPU.
The default model is the tiny SD1.5 (tools/tiny_models.py); --full builds a random full-size SD1.5 UNet.
Usage: python tools/benchmarks/motiondirector.py [--full] [--frames 4] [--size 64] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))

CONFIGS = ("lora", "full", "tav")


def load_model(full: bool):
    import comfy.sd

    if not full:
        from tiny_models import tiny_sd15_checkpoint

        path = tiny_sd15_checkpoint(REPO_ROOT / ".cache" / "tiny_models")
        return comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)[0]
    import comfy.ops
    from benchmarks.fatezero import SD15_UNET
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    shapes = UNetModel(**SD15_UNET, device="meta", operations=comfy.ops.disable_weight_init).state_dict()
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=g) * 0.02).half() for k, v in shapes.items()}
    return comfy.sd.load_diffusion_model_state_dict(state)


def full_rank_deltas():
    """Make every LoRA a full-rank trainable ΔW (``up`` (out, in), ``down`` the identity): full tuning."""
    from torch import nn
    from video_edit.kernels import lora

    class FullDelta(nn.Module):
        def __init__(self, in_features, out_features, rank, generator=None):
            super().__init__()
            self.up = nn.Parameter(torch.zeros(out_features, in_features))
            self.register_buffer("down", torch.eye(in_features), persistent=False)

        def forward(self, x):
            return nn.functional.linear(x, self.up)

    lora.LoRA = FullDelta


def worker(config: str, full: bool, frames: int, size: int, steps: int) -> dict:
    from comfy_server import default_comfyui_path

    sys.path.insert(0, str(default_comfyui_path()))
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    import comfy.model_management

    from video_edit.nodes import motiondirector, tuning
    from video_edit.nodes.shared import video_unet

    model = load_model(full)
    cond = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
    video = torch.randn(frames, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2))
    base = video_unet.inflate(model, frame_groupnorm=False)
    if config == "full":
        full_rank_deltas()

    def run(n):
        if config == "tav":
            tuning.one_shot_tune(base, {"samples": video}, cond, n, 3e-5, 0, gradient_checkpointing=True)
        else:
            videos = motiondirector.add_video(None, {"samples": video}, cond)
            motiondirector.train_motion_director(base, videos, n, rank=32, seed=0, gradient_checkpointing=True)

    cuda = torch.cuda.is_available()
    run(1)  # loads the model; also the first-step warm-up
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(1)
    one = time.perf_counter() - start
    start = time.perf_counter()
    run(1 + steps)
    many = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"seconds_per_step": (many - one) / steps, "peak_bytes": peak,
            "device": str(comfy.model_management.get_torch_device())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="random full-size SD1.5 UNet instead of the tiny one")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print("RESULT " + json.dumps(worker(opts.worker, opts.full, opts.frames, opts.size, opts.steps)))
        return 0
    results = {}
    for config in CONFIGS:
        cmd = [sys.executable, __file__, "--worker", config, "--frames", str(opts.frames), "--size", str(opts.size),
               "--steps", str(opts.steps)] + (["--full"] if opts.full else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[config] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    model = "random full-size SD1.5" if opts.full else "tiny SD1.5"
    print(f"{model}, {opts.frames} frames of {opts.size}x{opts.size}, {results['lora']['device']}, "
          f"{opts.steps} timed steps\n")
    labels = {"lora": "MotionDirector LoRA (dual path)", "full": "full tuning, same layers (dual path)",
              "tav": "Tune-A-Video one-shot (single path)"}
    print(f"{'':40}{'s/step':>10}{'peak MiB':>12}")
    for config in CONFIGS:
        r = results[config]
        print(f"{labels[config]:40}{r['seconds_per_step']:>10.3f}{r['peak_bytes'] / 2**20:>12.1f}")
    lora, full, tav = (results[c] for c in CONFIGS)
    print(f"\nLoRA / full tuning:  time {lora['seconds_per_step'] / full['seconds_per_step']:.2f}x, "
          f"peak memory {lora['peak_bytes'] / max(full['peak_bytes'], 1):.2f}x")
    print(f"MotionDirector / Tune-A-Video step time: {lora['seconds_per_step'] / tav['seconds_per_step']:.2f}x "
          "(goal <= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
