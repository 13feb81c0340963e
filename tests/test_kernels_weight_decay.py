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
