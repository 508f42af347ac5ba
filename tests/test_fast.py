"""fast.py, the speed tricks `load` applies: each computes what the model files compute (fast.Linear: the oneDNN
route for the inference rows ONEDNN_ROWS names; quick_gelu in place), and applying them changes no parameter."""

import pytest
import torch
import torch.nn.functional as F

from git_scratch import GIT, GitConfig, constants, fast, init_weights, layers
from git_scratch.fast import Linear


@pytest.mark.parametrize("route", [None, (1, 512)], ids=["mkl", "onednn"])  # whatever this CPU's own route is
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 17, 64, 197, 512, 513])
def test_linear_equals_f_linear_for_every_row_count(rows, route, monkeypatch):
    monkeypatch.setattr(fast, "ONEDNN_ROWS", route)
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


def test_quick_gelu_in_place_is_quick_gelu_bit_for_bit():
    x = torch.randn(4, 197, 64)
    assert torch.equal(fast.quick_gelu_inplace(x.clone()), layers.quick_gelu(x))


def test_apply_changes_no_parameter_and_keeps_the_outputs():
    torch.manual_seed(0)
    model = init_weights(GIT(GitConfig.preset("tiny")), std=0.1).eval()
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    px, ids = torch.randn(2, 3, 32, 32), torch.tensor([[1, 5, 9], [1, 4, 4]])
    with torch.no_grad():
        ref = model(px, ids).logits
        fast.apply(model)
        out = model(px, ids).logits
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == {k: p for k, (p, _) in before.items()}
    assert all(torch.equal(v, before[k][1]) for k, v in model.state_dict().items())
    assert isinstance(model.lm_head, fast.Linear) and model.vision.blocks[0].mlp.act is fast.quick_gelu_inplace
    # the oneDNN route sums in another order: float32 rounding through a few small layers (~1e-6 of the scale)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_the_config_names_exactly_the_activations_layers_implement():
    assert set(constants.ACTIVATIONS) == set(layers.ACTIVATIONS)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """The tiny preset with a wider vision encoder at git-base's 197 tokens an image: rows enough that a bfloat16
    batch rounds differently from one image on an AMX Xeon (tiny's own 17 do not)."""
    from git_scratch import save

    cfg = GitConfig.preset("tiny")
    cfg.vision.dim, cfg.vision.mlp_dim, cfg.vision.image_size, cfg.vision.patch_size = 256, 1024, 224, 16
    d = tmp_path_factory.mktemp("tiny")
    save(init_weights(GIT(cfg), std=0.1, generator=torch.Generator().manual_seed(3)), d)
    return d


def test_bfloat16_vision_loads_the_vision_encoder_in_bfloat16_and_the_rest_in_float32(tiny_ckpt):
    from git_scratch.load import load
    from git_scratch.precision import precision

    model = load(tiny_ckpt, device="cpu", dtype=constants.BF16_VISION)
    assert all(p.dtype == torch.bfloat16 for p in model.vision.parameters())
    assert all(p.dtype == torch.float32 for name, p in model.named_parameters() if not name.startswith("vision."))
    assert isinstance(model.vision, fast.OneImageACall) and model.dtype == torch.float32
    assert precision(dtype=constants.BF16_VISION).dtype == "bfloat16-vision"  # what results record: not whole-model bfloat16
    bf16 = load(tiny_ckpt, device="cpu", dtype="bfloat16")
    px = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        # one image: the bfloat16 model's vision pass, bit for bit, into a float32 projection and decoder
        assert torch.equal(model.vision(px), bf16.vision(px))
        assert model.encode_image(px).dtype == torch.float32
        assert model.generate(px, max_new_tokens=4, num_beams=2).shape == (1, 5)


def test_one_image_a_call_gives_each_image_the_features_it_gets_alone_bit_for_bit(tiny_ckpt):
    """bfloat16 products may round differently with their number of rows (oneDNN on an AMX Xeon: from two
    git-base images on, and for tiny_ckpt's), so a plain bfloat16 encoder's batch changes an image's features;
    OneImageACall's never does. Without it this fails on an AMX Xeon (mutation checked)."""
    from git_scratch.load import load

    model = load(tiny_ckpt, device="cpu", dtype=constants.BF16_VISION)
    size = model.config.vision.image_size
    px = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone = torch.cat([model.vision(px[i : i + 1]) for i in range(len(px))])
        assert torch.equal(model.vision(px), alone)
        assert model.vision(px[:0]).shape == (0, *alone.shape[1:])  # an empty batch stays an empty batch
