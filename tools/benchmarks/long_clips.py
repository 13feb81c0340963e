"""Long clips: every method's edit at 16, 32, 64 and 128 frames, windowed and at once, side by side.

Each run is its own process (a fresh peak RSS): the tiny SD1.5, 64x64 frames (8x8 latents; --size 16 for
128x128), 4 inversion steps and 4 editing steps, CPU. Windowed: VE Context Windows of 16 frames overlapping by 2
(Tune-A-Video, FateZero, MotionDirector; TokenFlow inverts with them) and VE TokenFlow's keyframes_per_pass 2
(16 frames per pass). Prints the peak RSS during the edit, the part of it the edit added over the loaded models
("growth"), and time per frame (the best of --repeats edits), then the goals: windowed peak at 128 frames <= 1.3x
its peak at 16; windowed time per frame <= 1.2x at once. Last, the cost per frame of one model call on a window's
batch against the longest clip's batch, at the same size: how much of the time ratio is the batch size rather
than the windowing.

Memory and time come from separate runs: memory with glibc set to hand freed memory back (RSS then follows live
memory) and a thread sampling RSS, time with neither (handing memory back on every free costs page faults, and
the sampling thread competes for the interpreter, both more for the windowed path's many smaller batches).

Usage: python tools/benchmarks/long_clips.py [--frames 16 32 64 128] [--methods ...] [--steps 4] [--size 8]
       [--time-only] [--repeats 2]
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
from measure import seconds  # noqa: E402

METHODS = ("tune_a_video", "fatezero", "tokenflow", "motiondirector")
WINDOW, OVERLAP, KEYFRAME_CHUNK, KEYFRAMES_PER_PASS = 16, 2, 8, 2
# One glibc arena that hands freed memory back: RSS then follows live memory instead of the allocator's caches
# (repeat runs agree to ~1 MiB instead of ~60). Only for the memory runs: it slows the windowed path more.
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


def edit(model, clip_model, method: str, frames: int, windowed: bool, steps: int, size: int):
    """A function running ``method``'s edit of a ``frames``-frame clip with the tiny model."""
    from video_edit.kernels.lora import lora_file_tensors
    from video_edit.nodes import (context_windows, fatezero, fatezero_capture, inversion, motion_lora_io,
                                  sparse_causal, tokenflow, video_unet)

    cond = clip_model.encode_from_tokens_scheduled(clip_model.tokenize("a man is skiing"))
    negative = clip_model.encode_from_tokens_scheduled(clip_model.tokenize(""))
    generator = torch.Generator().manual_seed(0)
    texture = torch.randn(1, 4, size, size + frames, generator=generator)
    clip = torch.cat([texture[..., f:f + size] for f in range(frames)])  # a panning texture

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


def one(method: str, frames: int, windowed: bool, steps: int, size: int, measure: str, repeats: int) -> dict:
    """``measure`` "memory": peak RSS of one edit (sampled by a thread); "time": the best of ``repeats`` edits,
    unsampled (the sampling thread would compete for the interpreter)."""
    model, clip_model = load_tiny()
    run = edit(model, clip_model, method, frames, windowed, steps, size)
    edit(model, clip_model, method, 8, windowed, steps, size)()  # loads the model into ComfyUI, warms the kernels
    gc.collect()
    if measure == "time":
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            out = run()
            best = min(best, time.perf_counter() - start)
        assert torch.isfinite(out).all()
        return {"seconds": best}
    baseline = psutil.Process().memory_info().rss
    with PeakRSS() as peak:
        out = run()
    assert torch.isfinite(out).all()
    return {"peak": peak.peak, "baseline": baseline}


def batch_cost(frame_counts: list[int], size: int) -> dict:
    """Seconds per frame of one call of the inflated sparse-causal model (cond only) on each batch of frames."""
    model, clip_model = load_tiny()
    import comfy.model_management
    from video_edit.nodes import sparse_causal
    from video_edit.nodes.shared import video_unet

    video_model = sparse_causal.with_cross_frame_attention(video_unet.inflate(model), "sparse_causal")
    comfy.model_management.load_models_gpu([video_model])
    context = clip_model.encode_from_tokens_scheduled(clip_model.tokenize("a man is skiing"))[0][0]
    options = {**video_model.model_options["transformer_options"], "cond_or_uncond": [0]}
    cost = {}
    for frames in frame_counts:
        x, sigma = torch.randn(frames, 4, size, size), torch.ones(frames)

        def call():
            with torch.inference_mode():
                video_model.model.apply_model(x, sigma, c_crossattn=context.expand(frames, -1, -1),
                                              transformer_options=options)
        cost[frames] = seconds(call, 3) / frames
    return cost


def in_subprocess(args: list[str], quiet_malloc: bool = False) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, **(QUIET_MALLOC if quiet_malloc else {})})
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(args)} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=8, help="latent side (frames are 8x as wide)")
    parser.add_argument("--time-only", action="store_true", help="skip the memory runs")
    parser.add_argument("--repeats", type=int, default=2, help="timed edits per cell (the best counts)")
    parser.add_argument("--one", nargs=4, metavar=("METHOD", "FRAMES", "WINDOWED", "MEASURE"), help=argparse.SUPPRESS)
    parser.add_argument("--batch-cost", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, frames, windowed, measure = args.one
        print(json.dumps(one(method, int(frames), windowed == "1", args.steps, args.size, measure, args.repeats)))
        return 0
    if args.batch_cost:
        print(json.dumps(batch_cost(args.frames, args.size)))
        return 0
    print(f"tiny SD1.5, {8 * args.size}x{8 * args.size} frames, {args.steps} + {args.steps} steps, windows of "
          f"{WINDOW} overlapping by {OVERLAP}, TokenFlow passes of {KEYFRAMES_PER_PASS} keyframes")

    results, failed = {}, []
    print(f"{'method':>15} {'frames':>6} | {'windowed: peak MiB':>18} {'growth':>7} {'s/frame':>8} | "
          f"{'at once: peak MiB':>17} {'growth':>7} {'s/frame':>8} | {'time ratio':>10}")
    for method in args.methods:
        for frames in args.frames:
            row = {}
            for windowed in (True, False):
                cell = ["--steps", str(args.steps), "--size", str(args.size), "--repeats", str(args.repeats),
                        "--one", method, str(frames), "1" if windowed else "0"]
                memory = {} if args.time_only else in_subprocess(cell + ["memory"], quiet_malloc=True)
                row[windowed] = {**memory, **in_subprocess(cell + ["time"])}
            results[method, frames] = row
            cells = []
            for r in (row[True], row[False]):
                peak, growth = ((f"{r['peak'] / 2**20:.0f}", f"{(r['peak'] - r['baseline']) / 2**20:.0f}")
                                if "peak" in r else ("-", "-"))
                cells.append(f"{peak:>18} {growth:>7} {r['seconds'] / frames:>8.3f}")
            print(f"{method:>15} {frames:>6} | {cells[0]} | {cells[1][1:]} | "
                  f"{row[True]['seconds'] / row[False]['seconds']:>10.2f}")
    print("\ngoals (windowed): peak at the most frames / peak at the fewest <= 1.3 (growth ratio in brackets); "
          "time per frame / at once <= 1.2 (worst size)")
    low, high = min(args.frames), max(args.frames)
    for method in args.methods:
        time_ratio = max(results[method, f][True]["seconds"] / results[method, f][False]["seconds"]
                         for f in args.frames)
        ok, peak = time_ratio <= 1.2, ""
        if not args.time_only:
            first, last = results[method, low][True], results[method, high][True]
            growth_ratio = (last["peak"] - last["baseline"]) / max(first["peak"] - first["baseline"], 1)
            ok = ok and last["peak"] / first["peak"] <= 1.3
            peak = f"peak {last['peak'] / first['peak']:.2f}x ({growth_ratio:.2f}x), "
        failed += [] if ok else [method]
        print(f"{method:>15}: {peak}time {time_ratio:.2f}x {'met' if ok else 'NOT met'}")
    cost = in_subprocess(["--size", str(args.size), "--batch-cost", "--frames", str(WINDOW), str(high)])
    print(f"\none model call, seconds per frame: a window's {WINDOW} frames {cost[str(WINDOW)]:.4f}, {high} frames "
          f"{cost[str(high)]:.4f} ({cost[str(WINDOW)] / cost[str(high)]:.2f}x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
