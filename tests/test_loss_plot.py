"""VE_PlotLoss: every loss of a run drawn against its step; a one-step (flat) run plots too."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def loss_plot(comfy_lib):
    from video_edit.nodes import loss_plot

    return loss_plot


def coloured(image: np.ndarray, colour) -> np.ndarray:
    return (np.abs(image.astype(int) - np.array(colour)).sum(-1) < 30)


def test_motiondirector_losses_are_two_curves(loss_plot):
    temporal = [1.0, 0.8, 0.7, 0.5]
    curves = loss_plot.loss_curves({"loss": temporal, "spatial": [0.9, 0.9, 0.6, 0.4], "temporal": temporal})
    assert list(curves) == ["spatial", "temporal"]  # 'loss' only repeated the temporal curve
    image = loss_plot.plot_losses(curves)
    assert image.shape == (loss_plot.HEIGHT, loss_plot.WIDTH, 3) and image.dtype == np.uint8
    first, second = (coloured(image, c) for c in loss_plot.COLOURS[:2])
    assert first.sum() > 100 and second.sum() > 100
    ys, xs = np.nonzero(second[:, : loss_plot.WIDTH // 3])  # the temporal curve starts at the top (its maximum)
    assert ys.min() < loss_plot.HEIGHT // 4


def test_a_single_step_and_bad_maps(loss_plot):
    image = loss_plot.plot_losses(loss_plot.loss_curves({"loss": [0.5]}))
    assert coloured(image, loss_plot.COLOURS[0]).sum() > 10  # the one point is drawn, no division by zero
    with pytest.raises(ValueError, match="loss: no loss values to plot"):
        loss_plot.loss_curves({"loss": []})
