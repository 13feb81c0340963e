"""VE_PlotLoss: every loss of a run drawn against its step; a one-step (flat) run plots too."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def loss_plot(comfy_lib):
    from video_edit.nodes import loss_plot

    return loss_plot


@pytest.fixture(scope="module")
def plots(comfy_lib):
    from video_edit.nodes.shared import plots

    return plots


def drawn(plots, curves) -> np.ndarray:
    image = plots.plot_curves(curves, "step")
    assert image.shape == (1, plots.HEIGHT, plots.WIDTH, 3)
    return (image[0].numpy() * 255).round().astype(np.uint8)


def coloured(image: np.ndarray, colour) -> np.ndarray:
    return (np.abs(image.astype(int) - np.array(colour)).sum(-1) < 30)


def test_motiondirector_losses_are_two_curves(loss_plot, plots):
    temporal = [1.0, 0.8, 0.7, 0.5]
    curves = loss_plot.loss_curves({"loss": temporal, "spatial": [0.9, 0.9, 0.6, 0.4], "temporal": temporal})
    assert list(curves) == ["spatial", "temporal"]  # 'loss' only repeated the temporal curve
    image = drawn(plots, curves)
    first, second = (coloured(image, c) for c in plots.COLOURS[:2])
    assert first.sum() > 100 and second.sum() > 100
    ys, xs = np.nonzero(second[:, : plots.WIDTH // 3])  # the temporal curve starts at the top (its maximum)
    assert ys.min() < plots.HEIGHT // 4


def test_a_single_step_and_bad_maps(loss_plot, plots):
    image = drawn(plots, loss_plot.loss_curves({"loss": [0.5]}))
    assert coloured(image, plots.COLOURS[0]).sum() > 10  # the one point is drawn, no division by zero
    masked = drawn(plots, {"spatial": [float("nan"), 0.5, 0.4], "temporal": [1.0, 0.9, 0.8]})  # NaN: masked steps
    assert coloured(masked, plots.COLOURS[0]).sum() > 10
    with pytest.raises(ValueError, match="loss: no loss values to plot"):
        loss_plot.loss_curves({"loss": []})
