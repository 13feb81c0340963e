"""Deterministic DDIM inversion as the official code does it, written in ComfyUI's sigma space, and the record it
leaves.

The official loop (Tune-A-Video ``ddim_loop``/``next_step``, and the same formula in FateZero, TokenFlow and
MotionDirector) starts from the clean latent taken as the sample at ``alphas_cumprod[0]`` (``final_alpha_cumprod``
of SD's scheduler) and, to go from level t to level t', predicts the noise on the current latent *with the target
timestep t'*. In ComfyUI's space (``x = x_vp / sqrt(alpha)``, ``sigma = sqrt((1 - alpha) / alpha)``) that step is
``x' = x + (sigma' - sigma) * eps`` with ``eps`` the model's noise prediction for the unchanged VP input at sigma'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .schedule import nearest


def inversion_sigmas(sampling_sigmas: torch.Tensor, clean_sigma: float) -> list[float]:
    """The ascending levels that invert a descending sampling schedule ending at 0: the clean clip stands at
    ``clean_sigma`` (SD's ``alphas_cumprod[0]``, as the official scheduler's ``final_alpha_cumprod``)."""
    levels = [float(s) for s in sampling_sigmas.flip(0)]
    if levels[0] != 0:
        raise ValueError("the sampling schedule must end at sigma 0")
    return [float(clean_sigma)] + levels[1:]


def vp_scale(sigma: float) -> float:
    """``sqrt(alpha)`` at ``sigma``: ComfyUI's ``x`` times this is the diffusers (VP) sample."""
    return (1.0 + float(sigma) ** 2) ** -0.5


def invert(denoise: Callable[[torch.Tensor, float], torch.Tensor], clean: torch.Tensor, sigmas: list[float],
           record: Callable[[int, torch.Tensor], None] | None = None, iterations: int = 0,
           extrapolate: bool = False) -> torch.Tensor:
    """DDIM inversion of ``clean`` along ascending ``sigmas`` (``sigmas[0]``: the level the clean latent is taken
    at). ``denoise(x, sigma)`` is ComfyUI's x0 prediction; ``record(k, x)`` sees the latent at ``sigmas[k]`` before
    each step; returns the latent at ``sigmas[-1]``.

    Each step is one model call on a guess of the target latent, ``x' = x + (sigma' - sigma) * eps(guess,
    sigma')``; the official step guesses the current latent's VP sample (``extrapolate`` False, ``iterations`` 0).
    ``extrapolate`` guesses ``x + (sigma' - sigma) * eps`` with the previous call's noise instead (from the second
    step on): closer to the target, at no extra call. ``iterations`` refine each step towards the inversion the DDIM
    sampler undoes, ``x' = x + (sigma' - sigma) * eps(x', sigma')`` (the sampler's Euler step from ``x'`` at
    ``sigma'`` lands back on ``x``): AIDI / ReNoise style fixed-point iterations, Anderson-accelerated, one model
    call each.
    """
    x = clean / vp_scale(sigmas[0])
    noise = None  # the last call's noise prediction
    for k, (sigma, target) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        if record is not None:
            record(k, x)

        def step_from(guess, x=x, sigma=sigma, target=target):
            """x + (target - sigma) * eps(guess, target): the inversion step with the noise predicted at ``guess``."""
            nonlocal noise
            noise = (guess - denoise(guess, target)) / target
            return x + (target - sigma) * noise

        if extrapolate and noise is not None:
            guess = x + (target - sigma) * noise
        else:
            guess = x * (vp_scale(sigma) / vp_scale(target))  # the same VP sample, at the target level
        x = anderson(step_from, step_from(guess), iterations)
    return x


def anderson(step: Callable[[torch.Tensor], torch.Tensor], guess: torch.Tensor, iterations: int,
             memory: int = 3) -> torch.Tensor:
    """The fixed point of ``step`` after ``iterations`` calls, by Anderson acceleration (type II) over the last
    ``memory`` iterates: the mix of their images whose residuals mix to the smallest norm.

    The small least-squares system is solved in the latents' own precision, at least float32: never float64 on
    a model's device (MPS has none); float32 keeps the round trip at its float32 floor
    (tools/benchmarks/inversion_round_trip.py)."""
    dtype = torch.promote_types(guess.dtype, torch.float32)
    ridge = max(1e-10, torch.finfo(dtype).eps)  # relative to the largest residual: keeps the solve well-posed
    guesses, images = [], []
    for _ in range(iterations):
        guesses, images = (guesses + [guess])[-memory:], (images + [step(guess)])[-memory:]
        residuals = torch.stack([(image - g).flatten().to(dtype) for g, image in zip(guesses, images)])
        gram = residuals @ residuals.T
        gram += torch.eye(len(guesses), dtype=gram.dtype, device=gram.device) * (ridge * gram.diagonal().max() + 1e-30)
        weights = torch.linalg.solve(gram, gram.new_ones(len(guesses)))
        weights = (weights / weights.sum()).to(guess.dtype)
        guess = sum(w * image for w, image in zip(weights, images))
    return guess


@dataclass
class Inversion:
    """A source clip's DDIM inversion: what later editing nodes need from it.

    ``sigmas`` ascend: ``sigmas[0]`` is the level the clean clip stands at, then the levels a sampler with
    ``steps`` DDIM steps visits. ``latents[k]`` is the clip at ``sigmas[k]`` in ComfyUI's space and LATENT units,
    on the CPU. ``noisiest`` is the clip at the inversion's last level ``noisiest_sigma``: ``latents[-1]`` when
    the inversion ran the sampler's step count, noisier when it ran more (TokenFlow's 500 for 50). ``method``
    names the inversion that made it; ``captures`` holds per-method extras (attention maps).
    """

    sigmas: torch.Tensor
    latents: torch.Tensor
    noisiest: torch.Tensor
    noisiest_sigma: float
    method: str = "ddim"
    captures: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def frames(self) -> int:
        return self.latents.shape[1]

    @property
    def source(self) -> torch.Tensor:
        """The clean clip, as it was encoded (LATENT units)."""
        return self.latents[0] * vp_scale(self.sigmas[0])

    def index_of(self, sigma: float) -> int:
        """Index of the stored level closest to ``sigma``."""
        return nearest(self.sigmas, sigma)

    def latent_at(self, sigma: float, presented_at: float | None = None) -> torch.Tensor:
        """The clip at the stored level nearest ``sigma``; with ``presented_at``, its DDPM (VP) sample written as a
        latent at that sigma, as the official code mixes VP latents of different levels."""
        index = self.index_of(sigma)
        if presented_at is None:
            return self.latents[index]
        return self.latents[index] * (vp_scale(self.sigmas[index]) / vp_scale(presented_at))
