"""Long clips: every method's edit at 16, 32, 64 and 128 frames, windowed and at once, side by side.

Each run is its own process (a fresh peak RSS): the tiny SD1.5, 64x64 frames (8x8 latents), 4 inversion steps
and 4 editing steps, CPU. Windowed: VE Context Windows of 16 frames overlapping by 2 (Tune-A-Video, FateZero,
MotionDirector; TokenFlow inverts with them) and VE TokenFlow's keyframes_per_pass 2 (16 frames per pass).
Prints the peak RSS during the edit, the part of it the edit added over the loaded models ("growth"), and
time per frame (glibc set to return freed memory, so RSS follows live memory), then the goals: windowed peak
at 128 frames <= 1.3x its peak at 16; windowed time per frame <= 1.2x at once.
Usage: python tools/benchmarks/long_clips.py [--frames 16 32 64 128] [--methods ...] [--steps 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inversion_round_trip import load_tiny  # noqa: E402
METHODS = ("tune_a_video", "fatezero", "tokenflow", "motiondirector")
WINDOW, OVERLAP, KEYFRAME_CHUNK, KEYFRAMES_PER_PASS, SIZE = 16, 2, 8, 2, 8
# One glibc arena that hands freed memory back: RSS then follows live memory instead of the allocator's caches
# (repeat runs agree to ~1 MiB instead of ~60). It slows both paths alike.
QUIET_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "0"}


class PeakRSS:
    """The highest resident set size of this process while the block runs, sampled every millisecond (the
    process's lifetime maximum would report the model loading instead)."""

    def __enter__(self):
        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def poll(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def sample(model, latent, positive, negative, steps: int, cfg: float = 7.5):
    import comfy.sample

    return comfy.sample.sample(model, torch.zeros_like(latent), steps, cfg, "ddim", "ddim_uniform", positive, negative,
                               latent, disable_noise=True, seed=0, disable_pbar=True)


def edit(model, clip_model, method: str, frames: int, windowed: bool, steps: int):
    """A function running ``method``'s edit of a ``frames``-frame clip with the tiny model."""
    from video_edit.kernels.lora import lora_file_tensors
    from video_edit.nodes import (context_windows, fatezero, fatezero_capture, inversion, motion_lora_io,
                                  sparse_causal, tokenflow, video_unet)

    cond = clip_model.encode_from_tokens_scheduled(clip_model.tokenize("a man is skiing"))
    negative = clip_model.encode_from_tokens_scheduled(clip_model.tokenize(""))
    generator = torch.Generator().manual_seed(0)
    texture = torch.randn(1, 4, SIZE, SIZE + frames, generator=generator)
    clip = torch.cat([texture[..., f:f + SIZE] for f in range(frames)])  # a panning texture

    def windows(m):
        return context_windows.with_context_windows(m, WINDOW, OVERLAP) if windowed else m

    if method == "tune_a_video":
        video_model = windows(sparse_causal.with_cross_frame_attention(video_unet.inflate(model), "sparse_causal"))
        return lambda: sample(video_model, inversion.ddim_invert(video_model, {"samples": clip}, cond, steps).noisiest,
                              cond, negative, steps)
    if method == "fatezero":
        zero_shot = windows(sparse_causal.with_cross_frame_attention(video_unet.inflate(model), "middle_frame",
                                                                     min_channels=640))

        def run():
            inverted = inversion.ddim_invert(zero_shot, {"samples": clip}, cond, steps,
                                             fatezero_capture.AttentionCapture())
            fused, _ = fatezero.attention_fusion(zero_shot, inverted, clip_model, "a man is skiing",
                                                 "a robot is skiing", "man")
            robot = clip_model.encode_from_tokens_scheduled(clip_model.tokenize("a robot is skiing"))
            return sample(fused, inverted.latents[-1], robot, negative, steps)
        return run
    if method == "tokenflow":
        def run():
            inverted = inversion.ddim_invert(windows(model), {"samples": clip}, cond, steps)
            edit_model, start = tokenflow.tokenflow(model, inverted, cond, KEYFRAME_CHUNK,
                                                    keyframes_per_pass=KEYFRAMES_PER_PASS if windowed else 0)
            return sample(edit_model, start["samples"], cond, negative, steps)
        return run
    if method == "motiondirector":
        inflated = video_unet.inflate(model)
        shapes = motion_lora_io.temporal_lora_shapes(inflated)
        temporal = lora_file_tensors({path: (0.01 * torch.randn(out, 8, generator=generator),
                                             torch.randn(8, inp, generator=generator))
                                      for path, (out, inp) in shapes.items()})
        generator_model = windows(motion_lora_io.apply_motion_lora(inflated, None, 0.0, temporal, 1.0))
        noise = torch.randn(clip.shape, generator=generator) * 14.6  # sigma_max: generation from noise
        return lambda: sample(generator_model, noise, cond, negative, steps)
    raise ValueError(f"unknown method {method!r}")


def one(method: str, frames: int, windowed: bool, steps: int) -> dict:
    model, clip_model = load_tiny()
    run = edit(model, clip_model, method, frames, windowed, steps)
    edit(model, clip_model, method, 8, windowed, steps)()  # loads the model into ComfyUI, warms the kernels
    gc.collect()
    baseline = psutil.Process().memory_info().rss
    with PeakRSS() as peak:
        start = time.perf_counter()
        out = run()
        elapsed = time.perf_counter() - start
    assert torch.isfinite(out).all()
    return {"peak": peak.peak, "baseline": baseline, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "FRAMES", "WINDOWED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, frames, windowed = args.one
        print(json.dumps(one(method, int(frames), windowed == "1", args.steps)))
        return 0

    results, failed = {}, []
    print(f"{'method':>15} {'frames':>6} | {'windowed: peak MiB':>18} {'growth':>7} {'s/frame':>8} | "
          f"{'at once: peak MiB':>17} {'growth':>7} {'s/frame':>8} | {'time ratio':>10}")
    for method in args.methods:
        for frames in args.frames:
            row = {}
            for windowed in (True, False):
                done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", method,
                                       str(frames), "1" if windowed else "0"], capture_output=True, text=True,
                                      env={**os.environ, **QUIET_MALLOC})
                if done.returncode:
                    print(done.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{method} at {frames} frames failed")
                row[windowed] = json.loads(done.stdout.strip().splitlines()[-1])
            results[method, frames] = row
            w, a = row[True], row[False]
            cells = [(r["peak"] / 2**20, (r["peak"] - r["baseline"]) / 2**20, r["seconds"] / frames) for r in (w, a)]
            print(f"{method:>15} {frames:>6} | {cells[0][0]:>18.0f} {cells[0][1]:>7.0f} {cells[0][2]:>8.3f} | "
                  f"{cells[1][0]:>17.0f} {cells[1][1]:>7.0f} {cells[1][2]:>8.3f} | {w['seconds'] / a['seconds']:>10.2f}")
    print("\ngoals (windowed): peak at the most frames / peak at the fewest <= 1.3 (growth ratio in brackets); "
          "time per frame / at once <= 1.2 (worst size)")
    low, high = min(args.frames), max(args.frames)
    for method in args.methods:
        first, last = results[method, low][True], results[method, high][True]
        peak_ratio = last["peak"] / first["peak"]
        growth_ratio = (last["peak"] - last["baseline"]) / max(first["peak"] - first["baseline"], 1)
        time_ratio = max(results[method, f][True]["seconds"] / results[method, f][False]["seconds"]
                         for f in args.frames)
        ok = peak_ratio <= 1.3 and time_ratio <= 1.2
        failed += [] if ok else [method]
        print(f"{method:>15}: peak {peak_ratio:.2f}x ({growth_ratio:.2f}x), time {time_ratio:.2f}x "
              f"{'met' if ok else 'NOT met'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
