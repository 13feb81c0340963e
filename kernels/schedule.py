"""Where a model call stands in a sampling schedule: the one place that maps a sigma to a step or a stored level,
and the step windows in which the methods inject source features."""

from __future__ import annotations

import torch


def nearest(sigmas: torch.Tensor, sigma: float) -> int:
    """Index of the entry of ``sigmas`` closest to ``sigma``."""
    return int(torch.argmin((sigmas.float() - float(sigma)).abs()))


def matching(sigmas: torch.Tensor, sigma: float, rel_tol: float = 1e-3, abs_tol: float = 1e-6) -> int | None:
    """Index of the entry of ``sigmas`` equal to ``sigma`` within the tolerances, or None when none is."""
    index = nearest(sigmas, sigma)
    close = abs(float(sigmas[index]) - float(sigma)) <= max(abs_tol, rel_tol * max(abs(float(sigma)),
                                                                               abs(float(sigmas[index]))))
    return index if close else None


def in_window(step: int, steps: int, fraction: float) -> bool:
    """Whether step ``step`` (0-based) of ``steps`` is among the first ``int(steps * fraction)``: the official
    injection window of TokenFlow's PnP and FateZero's self-attention replacement."""
    return step < int(steps * fraction)
