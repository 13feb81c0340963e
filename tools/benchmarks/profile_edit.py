"""Where an edit's time goes: one Tune-A-Video edit and one TokenFlow edit (inversion + sampling, the official
recipes of tools/benchmarks/fast_recipes.py at --steps) under cProfile, grouped by who owns the time.

Each function's own time goes to the code that owns it: the UNet (``comfy/ldm`` and ``comfy/ops.py``, its layers:
their Python, and the torch operations they run, attention included, also when a patch of ours calls ComfyUI's attention function),
ComfyUI's per-call machinery (samplers, model patcher, wrappers, conds: the rest of ComfyUI), this pack (its
patches and wrappers, with the torch operations they run themselves; apart, its temporal layers, which are
part of the video model) or other Python. Torch's
own Python (``nn.Module`` dispatch) and C functions count for the nearest caller outside torch, split by the
callers' cumulative times. Prints the shares and the pack's functions with the largest cumulative times.

    python tools/benchmarks/profile_edit.py [--full-size] [--models-dir DIR] [--frames 4] [--size 64] [--steps 3]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from collections import defaultdict
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parents[1]
REPO_ROOT = TOOLS.parent
sys.path[:0] = [str(TOOLS), str(TOOLS / "benchmarks")]

from fast_recipes import MODELS, Edit, import_comfyui, workflow_recipes  # noqa: E402
from tiny_models import full_size_sd15_checkpoint, tiny_sd15_checkpoint  # noqa: E402

GROUPS = {"unet": "UNet (comfy/ldm, comfy/ops: compute, Python)", "layers": "the pack's temporal layers (model)",
          "ours": "the pack's patches and wrappers", "comfy": "ComfyUI per-call overhead", "other": "other Python"}
PACK_FOLDERS = tuple(str(REPO_ROOT / folder).replace("\\", "/") + "/" for folder in ("nodes", "kernels"))
INJECTED_LAYERS = ("kernels/temporal.py",)  # Tune-A-Video's temporal attention: part of the video model
UNET_LAYERS = ("/comfy/ops.py",)  # the UNet's Linear and Conv layers (ComfyUI's casting ops)
TRANSPARENT = ("/torch/", "/einops/", "/contextlib.py", "/functools.py")


def owner(function) -> str | None:
    """Who owns a profiled function's own time; None: its callers do (C functions, torch's Python)."""
    path = function[0].replace("\\", "/")
    if path == "~" or any(part in path for part in TRANSPARENT):
        return None
    if path.startswith(PACK_FOLDERS):
        return "layers" if path.endswith(INJECTED_LAYERS) else "ours"
    if "/comfy/ldm/" in path or path.endswith(UNET_LAYERS):
        return "unet"
    if "/comfy" in path or "ComfyUI" in path:
        return "comfy"
    return "other"


def shares(stats: pstats.Stats) -> dict[str, float]:
    """Seconds per group: every function's own time, given to its owner or split over its callers' owners."""
    table = stats.stats
    fractions: dict = {}

    def owners_of(function, depth=0) -> dict[str, float]:
        if function in fractions:
            return fractions[function]
        fractions[function] = {"other": 1.0}  # a cycle or a deep chain ends here
        callers = table.get(function, (0, 0, 0, 0, {}))[4]
        total = sum(entry[3] for entry in callers.values())
        result: dict[str, float] = defaultdict(float)
        for caller, entry in callers.items():
            weight = entry[3] / total if total else 1 / len(callers)
            group = owner(caller)
            for name, part in ({group: 1.0} if group else owners_of(caller, depth + 1)).items():
                result[name] += weight * part
        fractions[function] = dict(result) or {"other": 1.0}
        return fractions[function]

    seconds: dict[str, float] = defaultdict(float)
    for function, (_, _, own, _, _) in table.items():
        group = owner(function)
        for name, part in ({group: 1.0} if group else owners_of(function)).items():
            seconds[name] += own * part
    return seconds


def profile_edit(method: str, checkpoint: Path, frames: int, size: int, steps: int):
    edit = Edit(method, checkpoint, frames)
    recipe = workflow_recipes()[method, "official"].scaled(steps)
    latent = torch.randn(frames, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)) / 0.18215
    edit.run(latent, type(recipe)(1, recipe.method, recipe.iterations, 0, 1))  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    edit.run(latent, recipe)
    profiler.disable()
    return recipe, pstats.Stats(profiler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="sampling steps (TokenFlow inverts 10x as many)")
    parser.add_argument("--methods", nargs="+", default=["tune_a_video", "tokenflow"])
    parser.add_argument("--full-size", action="store_true", help="random-weight UNet in SD1.5's real shapes")
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    parser.add_argument("--top", type=int, default=8, help="the pack's functions listed, by cumulative time")
    opts = parser.parse_args()
    checkpoint = full_size_sd15_checkpoint(opts.models_dir) if opts.full_size else tiny_sd15_checkpoint(MODELS)
    import_comfyui()
    model = "random full-size SD1.5 UNet" if opts.full_size else "tiny SD1.5"
    for method in opts.methods:
        with torch.no_grad():
            recipe, stats = profile_edit(method, checkpoint, opts.frames, opts.size, opts.steps)
        seconds = shares(stats)
        total = sum(seconds.values())
        print(f"\n{method}: {model}, {opts.frames} frames of {opts.size}x{opts.size}, inversion {recipe.steps} "
              f"steps, sampling {recipe.sample_steps}, {torch.get_num_threads()} threads: {total:.1f} s profiled")
        for group, label in GROUPS.items():
            print(f"  {label:50}{seconds.get(group, 0.0):9.2f} s {100 * seconds.get(group, 0.0) / total:6.1f} %")
        ours = sorted(((entry[3], function) for function, entry in stats.stats.items()
                       if owner(function) in ("ours", "layers")), reverse=True)[:opts.top]
        print("  the pack's functions by cumulative time (nested calls overlap):")
        for cumulative, (path, line, name) in ours:
            print(f"    {cumulative:8.2f} s {100 * cumulative / total:6.1f} %  {Path(path).name}:{line} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
