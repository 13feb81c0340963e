"""kernels/schedule.py: the one sigma -> step lookup and the injection window."""

import pytest
import torch

from video_edit.kernels.schedule import in_window, matching, nearest

SIGMAS = torch.tensor([14.6, 7.0, 3.1, 1.2, 0.03])


def test_nearest_and_matching():
    assert nearest(SIGMAS, 3.0) == 2 and nearest(SIGMAS, 100.0) == 0 and nearest(SIGMAS, 0.0) == 4
    assert matching(SIGMAS, 3.1) == 2 and matching(SIGMAS, 3.1 * (1 + 5e-4)) == 2
    assert matching(SIGMAS, 3.0) is None  # 3 % off: not a step of this schedule
    assert matching(SIGMAS, 3.0, rel_tol=0.05) == 2
    assert matching(torch.tensor([0.0, 1.0]), 1e-7) == 0  # the absolute tolerance near zero


@pytest.mark.parametrize("steps,fraction,first_outside", [(50, 0.5, 25), (50, 0.8, 40), (3, 0.5, 1), (10, 0.0, 0),
                                                           (10, 1.0, 10)])
def test_window_is_the_first_int_of_steps_times_fraction(steps, fraction, first_outside):
    inside = [k for k in range(steps) if in_window(k, steps, fraction)]
    assert inside == list(range(first_outside))
