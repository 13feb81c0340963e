"""Benchmark: each training-free edit's official recipe against the pack's fast recipe, side by side in one run.

Per method (TokenFlow, FateZero, the Tune-A-Video edit), the whole edit — VE DDIM Invert, the method's model, then
KSampler Advanced (add_noise disable, ddim, ddim_uniform) with the edit prompt at the method's cfg — with the
inversion settings of the method's workflow (tools/workflow_graphs):

- official: TokenFlow 500 DDIM steps keeping the 50 sampling levels, sampled in 50; FateZero and Tune-A-Video 50
  DDIM steps, sampled in 50;
- fast: TokenFlow fixed_point at 50 steps with no refinement (one call per step); FateZero and Tune-A-Video
  fixed_point at 20 steps with one refinement (two calls per step), sampled in 20.

Measured per recipe, each in its own process after a one-step warm-up: UNet calls (forward calls of the diffusion
model, and the frame rows they process), wall time and peak memory (GPU allocator peak, or on a CPU the peak
resident memory above the level before the edit) of inversion + sampling; and the round-trip error: the same
inversion sampled back from the edit's start latent, in the recipe's sampling steps, with the model that inverted
(no edit patches) and the inversion prompt at cfg 1, as the relative latent error to the source. Prints the
ratios official / fast (calls, time, memory) and fast / official (error).

The source is a random latent clip (std 1 in model units). --steps N scales every step count by N/50 (TokenFlow's
inversion stays 10x its sampling steps). Tiny SD1.5 by default; --full-size a random-weight UNet in SD1.5's real
shapes (written once to --models-dir, ~2 GB).

    python tools/benchmarks/fast_recipes.py [--frames 4] [--size 64] [--steps 50] [--methods tokenflow fatezero
        tune_a_video] [--full-size] [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parents[1]
REPO_ROOT = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(TOOLS / "benchmarks")]

from measure import now, peak_memory_during  # noqa: E402
from tiny_models import full_size_sd15_checkpoint, tiny_sd15_checkpoint  # noqa: E402

MODELS = REPO_ROOT / ".cache" / "tiny_models"
METHODS = ("tokenflow", "fatezero", "tune_a_video")
RECIPES = ("official", "fast")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Recipe:
    """VE DDIM Invert's settings and the sampler's step count."""

    steps: int
    method: str
    iterations: int
    keep_steps: int
    sample_steps: int

    def scaled(self, steps: int) -> Recipe:
        """The recipe at ``steps`` sampling steps for the official 50: every step count scaled by steps/50."""
        def scale(n):
            return 0 if n == 0 else max(1, round(n * steps / 50))
        return Recipe(scale(self.steps), self.method, self.iterations, scale(self.keep_steps),
                      scale(self.sample_steps))


def workflow_recipes() -> dict:
    """(method, recipe name) -> Recipe, read from the workflows' inversion settings."""
    from workflow_graphs import fatezero, tokenflow, tune_a_video

    recipes = {}
    for method, module in (("tokenflow", tokenflow), ("fatezero", fatezero), ("tune_a_video", tune_a_video)):
        for name, settings in (("official", module.OFFICIAL_INVERSION), ("fast", module.FAST_INVERSION)):
            keep = settings.get("keep_steps", 0)
            recipes[method, name] = Recipe(settings["steps"], settings["method"], settings["iterations"], keep,
                                           keep or settings["steps"])
    return recipes


def import_comfyui():
    from comfy_server import default_comfyui_path

    sys.path.insert(0, str(default_comfyui_path()))
    from comfy.cli_args import args

    args.cpu = DEVICE == "cpu"


class UNetCounter:
    """Counts the diffusion model's forward calls and the batch rows they process."""

    def __init__(self, unet):
        self.calls = self.rows = 0
        unet.register_forward_pre_hook(self.count)

    def count(self, module, args):
        self.calls += 1
        self.rows += args[0].shape[0]

    def reset(self):
        self.calls = self.rows = 0


class Edit:
    """One method's edit on the loaded checkpoint: its inverting model, prompts, cfg and edit model."""

    def __init__(self, method: str, checkpoint: Path, frames: int):
        import comfy.sd
        from workflow_graphs import fatezero, tokenflow, tune_a_video

        from video_edit.nodes import sparse_causal
        from video_edit.nodes.shared import video_unet

        model, self.clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False,
                                                                       output_clip=True)
        self.method, self.frames = method, frames
        if method == "tokenflow":
            self.model, self.cfg = model, 7.5
            prompts = tune_a_video.SOURCE_PROMPT, tokenflow.EDIT_PROMPT, tokenflow.NEGATIVE_PROMPT
        elif method == "fatezero":
            inflated = video_unet.inflate(model)
            self.model, self.cfg = sparse_causal.with_cross_frame_attention(inflated, "middle_frame"), 7.5
            prompts = fatezero.JEEP_PROMPT, fatezero.RED_JEEP_PROMPT, ""
        else:
            inflated = video_unet.inflate(model)
            self.model, self.cfg = sparse_causal.with_cross_frame_attention(inflated, "sparse_causal"), 12.5
            prompts = "", tune_a_video.EDIT_PROMPT, ""
        self.source_text, self.edit_text = prompts[0], prompts[1]
        self.source, self.positive, self.negative = (self.encode(text) for text in prompts)
        self.counter = UNetCounter(self.model.model.diffusion_model)

    def encode(self, text: str):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    def invert(self, latent: torch.Tensor, recipe: Recipe):
        from video_edit.nodes.fatezero_capture import AttentionCapture
        from video_edit.nodes.inversion import ddim_invert

        capture = AttentionCapture() if self.method == "fatezero" else None
        return ddim_invert(self.model, {"samples": latent}, self.source, recipe.steps, capture, recipe.keep_steps,
                           recipe.method, recipe.iterations)

    def edit_model(self, inversion):
        """(the model that samples the edit, its start latent)."""
        if self.method == "tokenflow":
            from video_edit.nodes.tokenflow import tokenflow

            model, start = tokenflow(self.model, inversion, self.source, min(8, max(1, self.frames // 2)))
            return model, start["samples"]
        if self.method == "fatezero":
            from video_edit.nodes.fatezero import attention_fusion

            model, _ = attention_fusion(self.model, inversion, self.clip, self.source_text, self.edit_text, "jeep",
                                        word_swap="refine")
            return model, inversion.noisiest
        return self.model, inversion.noisiest

    def sample(self, model, start, steps: int, positive, negative, cfg: float):
        import nodes as core_nodes

        (out,) = core_nodes.KSamplerAdvanced().sample(model, "disable", 0, steps, cfg, "ddim", "ddim_uniform",
                                                      positive, negative, {"samples": start}, 0, 10000, "disable")
        return out["samples"]

    def run(self, latent: torch.Tensor, recipe: Recipe):
        """The whole edit: (the inversion, the edited latent)."""
        inversion = self.invert(latent, recipe)
        model, start = self.edit_model(inversion)
        return inversion, self.sample(model, start, recipe.sample_steps, self.positive, self.negative, self.cfg)

    def round_trip_error(self, latent: torch.Tensor, inversion, recipe: Recipe) -> float:
        """Relative error of the clip sampled back (inverting model, inversion prompt, cfg 1) from the edit's start."""
        _, start = self.edit_model(inversion)
        back = self.sample(self.model, start, recipe.sample_steps, self.source, self.source, 1.0)
        return ((back - latent).norm() / latent.norm()).item()


def worker(method: str, recipe: Recipe, checkpoint: Path, frames: int, size: int) -> dict:
    import_comfyui()
    with torch.inference_mode(False), torch.no_grad():
        edit = Edit(method, checkpoint, frames)
        latent = torch.randn(frames, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)) / 0.18215
        edit.run(latent, Recipe(1, recipe.method, recipe.iterations, 0, 1))  # warm-up: loads, first calls
        edit.counter.reset()
        start = now()
        (inversion, _), peak = peak_memory_during(lambda: edit.run(latent, recipe))
        seconds = now() - start
        calls, rows = edit.counter.calls, edit.counter.rows
        error = edit.round_trip_error(latent, inversion, recipe)
    return {"calls": calls, "rows": rows, "seconds": seconds, "peak": peak, "error": error}


def load_average() -> str:
    return "n/a" if not hasattr(os, "getloadavg") else " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels")
    parser.add_argument("--steps", type=int, default=50, help="the official sampling steps (all scale by steps/50)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--full-size", action="store_true", help="random-weight UNet in SD1.5's real shapes")
    parser.add_argument("--models-dir", type=Path, default=MODELS, help="where the full-size checkpoint is written")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "RECIPE"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    checkpoint = (full_size_sd15_checkpoint(opts.models_dir) if opts.full_size else tiny_sd15_checkpoint(MODELS))
    import_comfyui()
    recipes = {key: recipe.scaled(opts.steps) for key, recipe in workflow_recipes().items()}
    if opts.worker:
        method, name = opts.worker
        print("RESULT " + json.dumps(worker(method, recipes[method, name], checkpoint, opts.frames, opts.size)))
        return 0

    model = "random full-size SD1.5 UNet" if opts.full_size else "tiny SD1.5"
    print(f"official vs fast recipe, {model}, {opts.frames} frames of {opts.size}x{opts.size}, {DEVICE}, "
          f"{torch.get_num_threads()} threads, load average before: {load_average()}")
    for method in opts.methods:
        results = {}
        for name in RECIPES:
            cmd = [sys.executable, "-P", __file__, "--worker", method, name, "--frames", str(opts.frames), "--size",
                   str(opts.size), "--steps", str(opts.steps), "--models-dir", str(opts.models_dir)]
            cmd += ["--full-size"] if opts.full_size else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        print(f"\n{method}")
        for name in RECIPES:
            r = recipes[method, name]
            print(f"  {name:8} invert {r.steps} steps {r.method}" + (f" +{r.iterations}" if r.method != "ddim" else "")
                  + (f" keep {r.keep_steps}" if r.keep_steps else "") + f", sample {r.sample_steps}")
        official, fast = results["official"], results["fast"]
        rows = [("UNet calls", "calls", "{:.0f}"), ("UNet frame rows", "rows", "{:.0f}"),
                ("wall time s", "seconds", "{:.2f}"), ("peak memory MiB", "peak", "{:.1f}")]
        print(f"  {'':22}{'official':>12}{'fast':>12}{'official/fast':>15}")
        for label, key, fmt in rows:
            scale = 2 ** -20 if key == "peak" else 1
            print(f"  {label:22}{fmt.format(official[key] * scale):>12}{fmt.format(fast[key] * scale):>12}"
                  f"{official[key] / max(fast[key], 1e-9):>15.2f}")
        print(f"  {'round-trip error':22}{official['error']:>12.3e}{fast['error']:>12.3e}"
              f"{'fast/official ':>11}{fast['error'] / official['error']:.3f}")
    print(f"\nload average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
