"""Forward parity: git_scratch against transformers.GitForCausalLM on the same converted weights.

Tolerances are relative to the scale of the compared tensor (max |reference|). Both sides compute in
float32 with the same operations, but in a different order: we use SDPA with a boolean mask where
transformers' text decoder uses an explicit softmax with an additive mask, and video frames go through
the encoder as one batch instead of one call per frame. Each reordering moves a float32 result by a few
ulps (2^-23 ~ 1.2e-7 relative); through 6-24 layers the measured worst case is below 9e-7 of the
output's scale (git-large; `python bench/parity.py` prints the table), so 1e-5 leaves 10x headroom while a wrong mask, a missed
LayerNorm or a wrong epsilon moves the outputs by 1e-3 or more.
"""

import pytest
import torch

from reference import SHAPES
from git_scratch.convert.convert import NAME_MAP, rename

REL = 1e-5  # see module docstring


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def hf_image_tokens(hf, pixels):
    """transformers' vision output and projected features, by its own modules."""
    git = hf.git
    if pixels.ndim == 4:
        feats = git.image_encoder(pixels).last_hidden_state
        return feats, git.visual_projection(feats)
    frames = [git.image_encoder(pixels[:, f]).last_hidden_state + git.img_temporal_embedding[f]
              for f in range(pixels.shape[1])]
    return frames, git.visual_projection(torch.cat(frames, dim=1))


FAST = ["tiny", "tiny-video", "odd", "odd-silu", "words", "words-video"]
FULL = [pytest.param(n, marks=pytest.mark.slow) for n in ("git-base", "git-large", "git-base-vatex")]


@pytest.mark.parametrize("name", FAST + FULL)
def test_vision_and_projection_match_transformers(reference, name):
    r = reference(name)
    px = r.pixels(2, seed=1)
    with torch.no_grad():
        ref_feats, ref_img = hf_image_tokens(r.hf, px)
        ours_img = r.ours.encode_image(px)
        if px.ndim == 4:
            assert rel_err(r.ours.vision(px), ref_feats) < REL
        else:
            for f, ref_f in enumerate(ref_feats):  # per frame, temporal embedding included
                ours_f = r.ours.vision(px[:, f]) + r.ours.img_proj.temporal_embed[f]
                assert rel_err(ours_f, ref_f) < REL
    assert ours_img.shape == ref_img.shape
    assert rel_err(ours_img, ref_img) < REL


@pytest.mark.parametrize("name", FAST + FULL)
def test_text_logits_match_transformers(reference, name):
    r = reference(name)
    px, ids = r.pixels(2, seed=2), r.ids(2, 9, seed=2)
    with torch.no_grad():
        ref = r.hf(pixel_values=px, input_ids=ids).logits
        ours = r.ours(px, ids).logits
    N = ref.shape[1] - ids.shape[1]
    assert N == r.ours.config.n_img_tokens
    assert ours.shape == (2, 9, r.ours.config.text.vocab_size)
    assert rel_err(ours, ref[:, N:]) < REL


@pytest.mark.parametrize("name", FAST + [pytest.param("git-base", marks=pytest.mark.slow)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_logits_match_transformers(reference, name, side):
    r = reference(name)
    px, ids = r.pixels(3, seed=3), r.ids(3, 8, seed=3)
    mask = torch.ones_like(ids)
    pad = r.ours.config.text.pad_id
    for row, n_pad in ((1, 3), (2, 5)):
        cols = slice(0, n_pad) if side == "left" else slice(8 - n_pad, 8)
        mask[row, cols] = 0
        ids[row, cols] = pad
    with torch.no_grad():
        ref = r.hf(pixel_values=px, input_ids=ids, attention_mask=mask).logits
        ours = r.ours(px, ids, attention_mask=mask).logits
        unpadded = r.ours(px, ids).logits
    N = ref.shape[1] - 8
    assert rel_err(ours, ref[:, N:]) < REL
    # the mask really removed the padded keys: real tokens after left padding see different context
    assert not torch.allclose(ours[1], unpadded[1], atol=1e-4)


@pytest.mark.parametrize("name", FAST + [pytest.param("git-base", marks=pytest.mark.slow)])
def test_loss_and_gradients_match_transformers(reference, name):
    r = reference(name)
    px, ids = r.pixels(2, seed=4), r.ids(2, 7, seed=4)
    labels = ids.clone()
    labels[0, 4:] = -100  # ignored positions
    r.hf.zero_grad()
    r.ours.zero_grad()
    ref_loss = r.hf(pixel_values=px, input_ids=ids, labels=labels).loss
    out = r.ours(px, ids, labels=labels)
    ref_loss.backward()
    out.loss.backward()
    # a scalar mean of 10 float32 log-probs: 1e-6 relative is still ~8 ulps
    assert abs(out.loss.item() - ref_loss.item()) <= 1e-6 * abs(ref_loss.item())

    ours_params = dict(r.ours.named_parameters())
    to_ours = rename([k for k, _ in r.hf.named_parameters()], NAME_MAP)
    checked = skipped = 0
    for hf_name, p in r.hf.named_parameters():
        ours_name = to_ours[hf_name]
        if ours_name.endswith("k_proj.bias"):
            # softmax ignores a score added to every key, so this gradient is exactly 0 in exact arithmetic;
            # both sides hold rounding noise (~1e-10) that has no scale to be relative to
            assert ours_params[ours_name].grad.abs().max() < 1e-6
            skipped += 1
            continue
        # gradients cross the network twice (forward, then backward): same reordering argument, and the
        # measured worst case over every parameter is 2e-6 (git-base), so 2e-5 keeps the headroom
        assert rel_err(ours_params[ours_name].grad, p.grad) < 2 * REL, ours_name
        checked += 1
    assert skipped == r.ours.config.vision.n_layers + r.ours.config.text.n_layers
    assert checked + skipped == len(ours_params)


def test_every_shape_has_parity_coverage():
    assert set(SHAPES) == {*FAST, "git-base", "git-large", "git-base-vatex"}


def test_other_image_sizes_interpolate_positions_like_transformers(reference):
    """A 48x64 image on a 32x32 model: the 4x4 position grid is resized bicubically to 6x8."""
    r = reference("tiny")
    g = torch.Generator().manual_seed(9)
    px, ids = torch.randn(2, 3, 48, 64, generator=g), r.ids(2, 5)
    with torch.no_grad():
        ref = r.hf(pixel_values=px, input_ids=ids, interpolate_pos_encoding=True).logits
        ours = r.ours(px, ids).logits
    assert ref.shape[1] - 5 == 1 + 6 * 8
    assert rel_err(ours, ref[:, -5:]) < REL


def test_hidden_states_and_attentions_are_returned(reference):
    r = reference("tiny")
    px, ids = r.pixels(1), r.ids(1, 5)
    with torch.no_grad():
        ref = r.hf(pixel_values=px, input_ids=ids, output_hidden_states=True, output_attentions=True)
        ref_vision = r.hf.git.image_encoder(px, output_hidden_states=True, output_attentions=True)
        out = r.ours(px, ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == r.ours.config.text.n_layers + 1
    assert len(out.vision_hidden_states) == len(ref_vision.hidden_states) == r.ours.config.vision.n_layers + 1
    assert len(out.attentions) == len(ref.attentions) and len(out.vision_attentions) == len(ref_vision.attentions)
    for ours_h, ref_h in zip(out.hidden_states + out.vision_hidden_states, ref.hidden_states + ref_vision.hidden_states):
        assert rel_err(ours_h, ref_h) < REL
    for ours_a, ref_a in zip(out.attentions + out.vision_attentions, ref.attentions + ref_vision.attentions):
        assert ours_a.shape == ref_a.shape
        # probabilities in [0, 1]: an absolute bound of a few ulps of 1
        assert (ours_a - ref_a).abs().max() < 1e-6
