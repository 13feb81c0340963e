"""Deterministic DDIM inversion, as ComfyUI sees it, and the record it leaves.

In ComfyUI's k-diffusion space the noisy latent is ``x = x0 + sigma * eps``. A deterministic DDIM step
(eta = 0) is then one Euler step: ``x' = x0_hat + sigma' * eps_hat``. Inversion is the same step on
*ascending* sigmas, so ComfyUI's own ``euler`` sampler inverts when given the flipped schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .schedule import nearest

# ComfyUI's FlipSigmas uses this in place of a leading 0 (a sigma of exactly 0 has no timestep).
CLEAN_SIGMA = 1e-4


def inversion_sigmas(sampling_sigmas: torch.Tensor) -> torch.Tensor:
    """The ascending schedule that inverts a descending sampling schedule ending at 0."""
    sigmas = sampling_sigmas.flip(0).clone()
    if sigmas[0] == 0:
        sigmas[0] = CLEAN_SIGMA
    return sigmas


@dataclass
class Inversion:
    """A source clip's DDIM inversion: what later editing nodes need from it.

    ``sigmas`` ascend (``sigmas[0]`` ~ clean, ``sigmas[-1]`` the largest); ``latents[k]`` is the clip at
    ``sigmas[k]``, in LATENT units, on the CPU. ``captures`` holds per-method extras (features, attention maps).
    """

    sigmas: torch.Tensor
    latents: torch.Tensor
    captures: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def frames(self) -> int:
        return self.latents.shape[1]

    def index_of(self, sigma: float) -> int:
        """Index of the stored level closest to ``sigma``."""
        return nearest(self.sigmas, sigma)

    def latent_at(self, sigma: float) -> torch.Tensor:
        return self.latents[self.index_of(sigma)]
