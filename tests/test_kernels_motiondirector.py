"""MotionDirector kernels on their own (pure torch): the LoRA delta, the file reader, the debiased loss and the noise prior (docs/design.md §4)."""

import math

import pytest
import torch
from torch import nn

from video_edit.kernels.lora import (LoRA, LoRASet, check_lora_tensors, debiased_temporal_loss, join_spatial_sets,
                                     linear_targets, lora_file_tensors, noise_prior, split_spatial_sets)


def linears(seed=0):
    torch.manual_seed(seed)
    root = nn.Module()
    root.a = nn.Linear(12, 20)
    root.b = nn.Sequential(nn.Linear(20, 6, bias=False))
    root.norm = nn.LayerNorm(6)
    return root


def trained(lora_set, seed=1):
    """Give every LoRA a non-zero up, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in lora_set.loras:
            lora.up.copy_(torch.randn(lora.up.shape, generator=g))
    return lora_set


def test_init_is_official_and_rank_is_clamped():
    lora = LoRA(256, 512, 32, torch.Generator().manual_seed(0))
    assert lora.down.shape == (32, 256) and lora.up.shape == (512, 32)
    assert torch.count_nonzero(lora.up) == 0
    assert abs(lora.down.std().item() - 1 / 32) < 0.1 / 32
    assert LoRA(12, 6, 32).down.shape == (6, 12)  # rank clamped to min(in, out)


def test_linear_targets_are_every_linear():
    assert list(linear_targets(linears())) == ["a", "b.0"]


def test_hooked_output_is_the_linear_with_delta_w_added():
    root = linears()
    x = torch.randn(3, 5, 12)
    base = root.b(root.a(x))
    lora_set = trained(LoRASet(linear_targets(root), rank=4, dropout=0.1)).eval()
    lora_set.attach(linear_targets(root))
    for scale in (1.0, 0.5, -2.0):
        lora_set.scale = scale
        merged = {name: (m.weight + scale * (lora.up @ lora.down), m.bias)
                  for (name, m), lora in zip(linear_targets(root).items(), lora_set.loras)}
        h = nn.functional.linear(x, *merged["a"])
        torch.testing.assert_close(root.b(root.a(x)), nn.functional.linear(h, *merged["b.0"]), rtol=1e-5, atol=1e-5)
    lora_set.scale = 0.0
    assert torch.equal(root.b(root.a(x)), base)
    lora_set.scale = 1.0
    lora_set.detach()
    assert torch.equal(root.b(root.a(x)), base)


def test_dropout_only_in_training_and_on_the_lora_branch():
    root = linears()
    lora_set = trained(LoRASet({"a": root.a}, rank=4, dropout=0.5))
    lora_set.attach({"a": root.a})
    x = torch.randn(64, 12)
    delta = lora_set.loras[0](x)
    base = nn.functional.linear(x, root.a.weight, root.a.bias)
    torch.manual_seed(0)
    kept = (root.a(x) - base) / delta
    # Each LoRA output element is either dropped (0) or kept and rescaled by 1/(1-p) = 2.
    assert set(kept.flatten().round(decimals=3).unique().tolist()) == {0.0, 2.0}
    lora_set.eval()
    torch.testing.assert_close(root.a(x), base + delta)


def test_file_layout_and_its_check():
    root = linears()
    lora_set = trained(LoRASet(linear_targets(root), rank=4))
    tensors = lora_set.file_tensors("p.")
    assert set(tensors) == {f"p.{m}{s}" for m in ("a", "b.0") for s in (".lora_up.weight", ".lora_down.weight", ".alpha")}
    assert tensors["p.a.alpha"].item() == 4.0 and tensors["p.b.0.alpha"].item() == 4.0
    torch.testing.assert_close(tensors["p.a.lora_up.weight"] @ tensors["p.a.lora_down.weight"],
                               lora_set.loras[0].up @ lora_set.loras[0].down)
    shapes = {"p.a": (20, 12), "p.b.0": (6, 20)}
    assert check_lora_tensors(tensors, shapes, "f") == 4
    with pytest.raises(ValueError, match="f: it does not fit this model .1 of its modules are not targets here, e.g. p.a"):
        check_lora_tensors(tensors, {"p.b.0": (6, 20)}, "f")
    with pytest.raises(ValueError, match="f: it does not fit this model .it lacks 1 target modules, e.g. p.c"):
        check_lora_tensors(tensors, {**shapes, "p.c": (6, 20)}, "f")
    with pytest.raises(ValueError, match=r"f: p.a has up \(20, 4\) and down \(4, 12\), the model's Linear maps 16 -> 20"):
        check_lora_tensors(tensors, {**shapes, "p.a": (20, 16)}, "f")
    with pytest.raises(ValueError, match="is not a LoRA key"):
        check_lora_tensors({**tensors, "p.a.weight": torch.zeros(1)}, shapes, "f")


def test_lora_file_tensors_are_detached_fp32_copies():
    up, down = torch.randn(5, 2, dtype=torch.float16, requires_grad=True), torch.randn(2, 3, dtype=torch.float16)
    tensors = lora_file_tensors({"m": (up, down)})
    assert tensors["m.lora_up.weight"].dtype == torch.float32 and not tensors["m.lora_up.weight"].requires_grad
    assert tensors["m.alpha"].ndim == 0


def test_debiased_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    pred, eps = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    k = 2
    n = pred.numel()
    mse = sum(((pred[f] - eps[f]) ** 2).sum() for f in range(5)) / n
    ad = sum(((math.sqrt(2) * pred[f] - pred[k] - (math.sqrt(2) * eps[f] - eps[k])) ** 2).sum() for f in range(5)) / n
    torch.testing.assert_close(debiased_temporal_loss(pred, eps, k), mse + ad)
    # The anchor's own row is (√2 − 1)·(pred_k − ε_k): a perfect prediction of frame k alone leaves its term at 0.
    fixed = pred.clone()
    fixed[k] = eps[k]
    others = sum(((math.sqrt(2) * (fixed[f] - eps[f])) ** 2).sum() for f in range(5) if f != k) / n
    torch.testing.assert_close(debiased_temporal_loss(fixed, eps, k) - torch.nn.functional.mse_loss(fixed, eps), others)


def test_noise_prior_mixes_and_keeps_unit_variance():
    g = torch.Generator().manual_seed(0)
    inverted, noise = torch.randn(16, 4, 32, 32, generator=g), torch.randn(16, 4, 32, 32, generator=g)
    assert torch.equal(noise_prior(inverted, noise, 0.0), noise)
    assert torch.equal(noise_prior(inverted, noise, 1.0), inverted)
    mixed = noise_prior(inverted, noise, 0.3)
    torch.testing.assert_close(mixed, math.sqrt(0.3) * inverted + math.sqrt(0.7) * noise)
    assert abs(mixed.std().item() - 1.0) < 0.02


def test_spatial_sets_share_a_file_under_video_prefixes():
    one = {"diffusion_model.a.lora_up.weight": torch.zeros(2, 1), "diffusion_model.a.alpha": torch.tensor(1.0)}
    two = {k: v + 1 for k, v in one.items()}
    assert join_spatial_sets([one]) == one  # a single set keeps the standard LoRA keys
    joined = join_spatial_sets([one, two])
    assert set(joined) == {f"video{k}.{key}" for k in (0, 1) for key in one}
    sets = split_spatial_sets(joined, "spatial_file")
    assert len(sets) == 2 and all(torch.equal(sets[1][k], two[k]) for k in two)
    assert split_spatial_sets(one, "spatial_file") == [one]
    with pytest.raises(ValueError, match="spatial_file: it mixes per-video spatial sets"):
        split_spatial_sets({**joined, **one}, "spatial_file")
    with pytest.raises(ValueError, match=r"spatial_file: its per-video sets are numbered \[0, 2\]"):
        split_spatial_sets({k.replace("video1.", "video2."): v for k, v in joined.items()}, "spatial_file")
