"""kernels/weight_decay.py: decaying the delta equals torch AdamW's decoupled decay of the whole weight."""

import torch

from video_edit.kernels.weight_decay import decay_delta_


def test_decay_on_the_delta_equals_adamw_decay_of_the_whole_weight():
    g = torch.Generator().manual_seed(0)
    base, delta = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) * 0.1
    whole = torch.nn.Parameter(base + delta)
    whole.grad = torch.zeros_like(whole)  # a zero gradient: AdamW's step is then its decay alone
    torch.optim.AdamW([whole], lr=3e-2, weight_decay=1e-2).step()
    decayed = decay_delta_(delta.clone(), base, 3e-2, 1e-2)
    torch.testing.assert_close(base + decayed, whole.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(base + decayed, base + delta)


def test_decay_with_a_half_precision_base_stays_fp32():
    """A bf16 / fp16 model's weight with its fp32 delta: the decay is computed in fp32, on the delta only."""
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(6, 5, generator=g) * 0.1
    for dtype in (torch.bfloat16, torch.float16):
        base = torch.randn(6, 5, generator=g).to(dtype)
        decayed = decay_delta_(delta.clone(), base, 3e-2, 1e-2)
        assert decayed.dtype == torch.float32
        torch.testing.assert_close(decayed, delta - 3e-4 * (base.float() + delta), rtol=1e-6, atol=1e-8)
