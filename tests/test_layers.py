"""layers.Linear: its CPU speed path (oneDNN for 4-512 inference rows) computes what nn.Linear computes."""

import pytest
import torch
import torch.nn.functional as F

from git_scratch.layers import Linear


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 17, 64, 197, 512, 513])
def test_linear_equals_f_linear_for_every_row_count(rows):
    torch.manual_seed(0)
    lin = Linear(96, 160)
    x = torch.randn(rows, 96)
    with torch.no_grad():
        ours, ref = lin(x), F.linear(x.double(), lin.weight.double(), lin.bias.double())
    # float32 sums of 96 products in another order: a few ulps of the output's scale (~1e-7 relative)
    assert ((ours.double() - ref).abs().max() / ref.abs().max()) < 1e-6


def test_linear_takes_batched_and_non_contiguous_inputs():
    torch.manual_seed(0)
    lin = Linear(32, 48)
    x = torch.randn(6, 32, 5).transpose(1, 2)  # (6, 5, 32), not contiguous: 30 rows
    with torch.no_grad():
        ours = lin(x)
    ref = F.linear(x, lin.weight, lin.bias)
    # two float32 sums of 32 products in different orders: a few ulps apart (~1e-7), far inside 1e-5
    assert ours.shape == (6, 5, 48) and torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_linear_under_autograd_is_nn_linear_and_has_gradients():
    torch.manual_seed(0)
    lin = Linear(16, 8)
    x = torch.randn(10, 16, requires_grad=True)
    y = lin(x)
    y.sum().backward()
    assert torch.equal(y, F.linear(x, lin.weight, lin.bias)) and lin.weight.grad is not None and x.grad is not None
