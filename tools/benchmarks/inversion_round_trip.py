"""Measurement: how well sampling back from VE_DDIMInvert's latent reconstructs the clip, for each inversion
method and the pack's earlier inversion (noise predicted at the current level, from sigma 1e-4), side by side.

Every inversion is sampled back as the nodes document: KSampler Advanced, add_noise disable, ddim, ddim_uniform,
the inversion's step count, cfg 1 with the inversion prompt. Two models:

- ``gaussian``: the exact denoiser of Gaussian latents (std 1 in model units), a smooth stand-in for a trained
  model, so what remains is the inversion's own discretisation error;
- ``tiny-unet``: the tiny random-weight SD1.5 UNet of the tests (a very rough noise predictor), inflated, with
  sparse-causal attention.

Prints the relative latent error of each, the ratios to ``ddim`` and the model calls per step. No GPU needed.

    python tools/benchmarks/inversion_round_trip.py [--steps 8 25 50] [--frames 8] [--size 64] [--iterations 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

TOOLS = Path(__file__).resolve().parents[1]
REPO_ROOT = TOOLS.parent
sys.path[:0] = [str(TOOLS)]

from tiny_models import tiny_sd15_checkpoint  # noqa: E402

MODELS = REPO_ROOT / ".cache" / "tiny_models"
EARLIER_CLEAN_SIGMA = 1e-4  # the pack's earlier start level (ComfyUI's FlipSigmas value)


def load_tiny():
    """The tiny SD1.5 (model, CLIP), loaded by ComfyUI on the CPU."""
    from comfy_server import default_comfyui_path

    sys.path.insert(0, str(default_comfyui_path()))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sd

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_sd15_checkpoint(MODELS)), output_clip=True)
    return model, clip


def load():
    model, clip = load_tiny()
    return model, clip.encode_from_tokens_scheduled(clip.tokenize(""))


def gaussian_denoiser(model):
    """A clone of ``model`` that denoises as the exact x0 prediction for latents ~ N(0, 1) in model units."""

    def exact_denoised(apply_model, args):  # ComfyUI passes the sampler's x and sigma, and wants x0
        sigma = args["timestep"].view(-1, 1, 1, 1).to(args["input"])
        return args["input"] / (1 + sigma ** 2)

    clone = model.clone()
    clone.set_model_unet_function_wrapper(exact_denoised)
    return clone


def earlier_inversion(model, latent, cond, steps):
    """The pack's earlier inversion: ComfyUI's euler on the flipped ddim_uniform schedule from sigma 1e-4."""
    import comfy.sample
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", steps).flip(0)
    sigmas[0] = EARLIER_CLEAN_SIGMA
    return comfy.sample.sample_custom(model, torch.zeros_like(latent), 1.0, comfy.samplers.sampler_object("euler"),
                                      sigmas, cond, cond, latent, disable_pbar=True)


def sample_back(model, noisy, cond, steps):
    import nodes as core_nodes

    (out,) = core_nodes.KSamplerAdvanced().sample(model, "disable", 0, steps, 1.0, "ddim", "ddim_uniform", cond, cond,
                                                  {"samples": noisy}, 0, 10000, "disable")
    return out["samples"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 25, 50])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3, help="fixed_point refinements per step")
    options = parser.parse_args()

    model, cond = load()
    from video_edit.nodes import inversion, sparse_causal
    from video_edit.nodes.shared import video_unet

    video_model = sparse_causal.with_cross_frame_attention(video_unet.inflate(model), "sparse_causal")
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(options.frames, 4, options.size // 8, options.size // 8, generator=generator) / 0.18215
    print(f"round trip, relative latent error of the reconstruction ({options.frames} frames, {options.size}px); "
          f"model calls per step: ddim 1, fixed_point {1 + options.iterations}, earlier 1")
    print(f"{'model':>10} {'steps':>5} {'ddim':>10} {'fixed_point':>12} {'earlier':>10} {'fixed/ddim':>11} "
          f"{'earlier/ddim':>13}")
    for name, subject in (("gaussian", gaussian_denoiser(video_model)), ("tiny-unet", video_model)):
        for steps in options.steps:
            inverted = [inversion.ddim_invert(subject, {"samples": latent}, cond, steps).noisiest,
                        inversion.ddim_invert(subject, {"samples": latent}, cond, steps, method="fixed_point",
                                              iterations=options.iterations).noisiest,
                        earlier_inversion(subject, latent, cond, steps)]
            ddim, fixed, earlier = [((sample_back(subject, noisy, cond, steps) - latent).norm() / latent.norm()).item()
                                    for noisy in inverted]
            print(f"{name:>10} {steps:>5} {ddim:>10.3e} {fixed:>12.3e} {earlier:>10.3e} {fixed / ddim:>11.2e} "
                  f"{earlier / ddim:>13.3f}")


if __name__ == "__main__":
    main()
