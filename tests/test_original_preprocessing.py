"""compat="original": microsoft/GenerativeImage2Text's preprocessing (inference.py @ faae4fb), against a
recomputation written here with Pillow, numpy and exact integer arithmetic, none of git_scratch's helpers.

Pixels are compared for exact equality: the reference makes the same Pillow bicubic call on the same uint8 image
and the same float32 operations (x / 255, then (x - mean) / std), so any difference is a real one (a shifted
crop, a wrong size, other statistics), never rounding.
"""

import json
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from git_scratch import GIT, GitConfig, Processor
from git_scratch.preprocessing.truncation import original_question
from git_scratch.record import recording
from git_scratch.preprocessing.pixels import original_pixels

# The original's Normalize arguments (inference.py:126-129), written out rather than imported.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    """Uniform noise: every column differs from its neighbours, so a crop shifted by one pixel shows."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def half_even_offset(d: int) -> int:
    """round(d / 2) with ties to even, in integers: d = 4k + 3 rounds up (k + 1.5 -> k + 2), d = 4k + 1 down."""
    return d // 2 + (d % 4 == 3)


def reference(im: Image.Image, crop: int, max_size: int | None = None) -> np.ndarray:
    """The original's get_image_transform, recomputed: (3, h, w) float32."""
    w, h = im.size
    short, long = min(w, h), max(w, h)
    size = crop
    if max_size is not None and long * crop > max_size * short:  # the long side would pass max_size
        size = round(Fraction(max_size * short, long))  # Fraction's round is half to even, as the original's
    nw, nh = (size, size * long // short) if w <= h else (size * long // short, size)
    x = np.asarray(im.resize((nw, nh), Image.Resampling.BICUBIC))
    if max_size is None:
        top, left = half_even_offset(nh - crop), half_even_offset(nw - crop)
        x = x[top : top + crop, left : left + crop]
    return ((x.astype(np.float32) / np.float32(255) - MEAN) / STD).transpose(2, 0, 1)


def checkpoint(d, preset: str, preprocessor: dict | None = None):
    """A checkpoint directory with a preset's config.json (the processor reads no weights)."""
    d.mkdir(parents=True, exist_ok=True)
    GitConfig.preset(preset).save(d / "config.json")
    if preprocessor is not None:
        (d / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return d


# ----------------------------------------------------------------------------- original_pixels


@pytest.mark.parametrize("w, h", [
    (300, 300),  # square: resized, nothing to crop
    (227, 224),  # wide, short side already 224: 3 extra columns, crop from 2 (transformers: 1)
    (454, 448),  # wide, resized to 227 x 224: the same offsets after a real resize
    (224, 229),  # tall, 5 extra rows: round(2.5) is 2, half to even (half up would give 3)
    (640, 427),  # a common photo size: resized to 335 x 224, 111 extra columns, crop from 56 (transformers: 55)
    (480, 640),  # tall photo: 224 x 298, 74 extra rows, 37 either way
    (37, 100),   # tall and upscaled
])
def test_captioning_resizes_the_short_side_and_crops_from_the_rounded_offset(w, h):
    im = noise(w, h)
    ours = original_pixels(im, 224)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference(im, 224))


def test_the_crop_offset_rounds_half_to_even_not_down():
    im = noise(227, 224)  # short side 224: no resize, so columns can be read off the image itself
    cols = (np.asarray(im).astype(np.float32) / np.float32(255) - MEAN) / STD  # (224, 227, 3)
    ours = original_pixels(im, 224)
    np.testing.assert_array_equal(ours, cols[:, 2:226].transpose(2, 0, 1))  # round(1.5) = 2
    assert not np.array_equal(ours, cols[:, 1:225].transpose(2, 0, 1))  # floor, transformers' offset


def test_transformers_mode_differs_from_the_original_only_by_the_crop_offset():
    # 227 wide: offsets 1 (floor) and 2 (round) -> the same pixels one column apart. 226 wide: offset 1 both.
    # Exact: x * (1/255) in float64 cast to float32 equals x / 255 in float32 for every grey level.
    shifted = noise(227, 224)
    hf = Processor()(images=shifted, return_tensors="np")["pixel_values"][0]
    ours = original_pixels(shifted, 224)
    assert not np.array_equal(hf, ours)
    np.testing.assert_array_equal(hf[:, :, 1:], ours[:, :, :-1])
    same = noise(226, 224)
    np.testing.assert_array_equal(Processor()(images=same, return_tensors="np")["pixel_values"][0],
                                  original_pixels(same, 224))


@pytest.mark.parametrize("crop, max_size, w, h, shape", [
    (480, 640, 1024, 768, (480, 640)),   # base VQAv2 / TextVQA: short side 480, long 640
    (420, 560, 1024, 768, (420, 560)),   # large VQAv2 / TextVQA
    (480, 640, 640, 480, (480, 640)),    # already the size: unchanged
    (480, 640, 2000, 500, (160, 640)),   # wide: 4:1 would be 1920 long, so the long side caps at 640
    (480, 640, 600, 900, (640, 427)),    # tall: 720 would pass 640; short side round(426.67) = 427
    (480, 640, 1280, 425, (212, 638)),   # 640 * 425 / 1280 = 212.5 rounds to even 212; long int(638.49)
    (480, 640, 300, 200, (427, 640)),    # small, upscaled, capped by the long side
])
def test_vqa_keeps_the_aspect_ratio_and_never_crops(crop, max_size, w, h, shape):
    im = noise(w, h)
    ours = original_pixels(im, crop, max_size)
    assert ours.shape == (3, *shape)
    np.testing.assert_array_equal(ours, reference(im, crop, max_size))


def test_random_sizes_match_the_reference_in_both_branches():
    rng = np.random.default_rng(1)
    for w, h in rng.integers(20, 700, (8, 2)):
        im = noise(int(w), int(h))
        np.testing.assert_array_equal(original_pixels(im, 224), reference(im, 224))
        np.testing.assert_array_equal(original_pixels(im, 480, 640), reference(im, 480, 640))


# ----------------------------------------------------------------------------- Processor, compat="original"


def test_a_captioning_checkpoint_crops_with_clip_statistics_whatever_its_preprocessor_file_says(tmp_path):
    # The hub's video checkpoints say mean = std = 0.5; the original uses CLIP's for every checkpoint.
    half = {"size": {"shortest_edge": 200}, "crop_size": {"height": 200, "width": 200},
            "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    d = checkpoint(tmp_path, "git-base", half)
    im = noise(640, 427)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no preprocessing settings" or any other warning
        p = Processor.from_pretrained(d, compat="original")
    np.testing.assert_array_equal(p(images=im, return_tensors="np")["pixel_values"], reference(im, 224)[None])
    assert Processor.from_pretrained(d)(images=im).pixel_values.shape == (1, 3, 200, 200)  # transformers: the file


def test_a_vqa_checkpoint_keeps_the_aspect_ratio_trimmed_to_whole_patches(tmp_path):
    base = Processor.from_pretrained(checkpoint(tmp_path / "base", "git-base-vqav2"), compat="original")
    tall = noise(600, 900)  # the original's 640 x 427 pixels; 427 = 26 * 16 + 11: the patch conv reads 416
    got = base(images=tall, return_tensors="np")["pixel_values"]
    assert got.shape == (1, 3, 640, 416)
    np.testing.assert_array_equal(got[0], reference(tall, 480, 640)[:, :640, :416])
    large = Processor.from_pretrained(checkpoint(tmp_path / "large", "git-large-vqav2"), compat="original")
    photo = noise(1024, 768)
    got = large(images=photo, return_tensors="np")["pixel_values"]
    assert got.shape == (1, 3, 420, 560)  # 30 x 40 patches of 14 px, nothing trimmed
    np.testing.assert_array_equal(got[0], reference(photo, 420, 560))


def test_the_vision_encoder_sees_what_the_originals_clip_sees(tmp_path):
    """The trimmed pixels through our encoder = the original's CLIP front (layers/CLIP/model.py:240-256),
    recomputed here: a stride-p convolution over the *untrimmed* image (it drops the remainder itself), the
    square position grid reshaped row-major and resized bicubically (align_corners off) to the image's grid."""
    cfg = GitConfig.preset("tiny")  # 32 px, patch 8: a 4 x 4 trained grid
    model = GIT(cfg).eval()
    with torch.no_grad():
        for p in model.vision.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    full = torch.from_numpy(original_pixels(noise(300, 200), 32, 60))[None]  # (1, 3, 32, 48): long side capped
    full = torch.nn.functional.pad(full, (0, 5, 0, 3), value=1.0)  # 35 x 53: remainders the conv must drop
    trimmed = full[..., :32, :48]
    v, D, g = model.vision, cfg.vision.dim, cfg.vision.image_size // cfg.vision.patch_size
    with torch.no_grad():
        x = torch.nn.functional.conv2d(full, v.patch_embed.weight, stride=cfg.vision.patch_size)  # (1, D, 4, 6)
        grid = v.pos_embed[1:].reshape(g, g, D).permute(2, 0, 1)[None]
        grid = torch.nn.functional.interpolate(grid, size=x.shape[2:], mode="bicubic")[0].permute(1, 2, 0)
        pos = torch.cat([v.pos_embed[:1], grid.reshape(-1, D)])
        x = torch.cat([v.cls_token.expand(1, 1, D), x.flatten(2).transpose(1, 2)], dim=1) + pos
        want = v.ln_pre(x)  # the input of the first block
        with recording([v.blocks], maps=False) as rec:
            v(trimmed)
        hidden = rec.hidden_states(v.blocks)
    # The same float32 ops in the same order (conv, interpolate, add, LayerNorm): equal up to the convolution's
    # summation order over a different input size, a few ulps; a one-patch shift or a transposed grid moves
    # entries by O(1).
    torch.testing.assert_close(hidden[0], want, rtol=0, atol=1e-5)


def test_an_image_thinner_than_a_patch_after_resizing_is_a_clear_error():
    p = Processor(compat="original", crop_size=480, max_size=640, patch_size=16)
    # Short side round(640 * 10 / 2000) = 3, long side int(3 * 2000 / 10) = 600: no whole 16 px row.
    with pytest.raises(ValueError, match="2000x10 is resized to 600x3, thinner than one 16 px patch"):
        p(images=np.zeros((10, 2000, 3), np.uint8))


def test_the_resize_budget_applies_to_the_original_recipe_too():
    # 60000 x 1 would be resized to 13,440,000 x 224 before the crop: refused before Pillow allocates it.
    p = Processor(compat="original")
    with pytest.raises(ValueError, match="60000x1 would be resized to 13440000x224"):
        p(images=np.zeros((1, 60000, 3), np.uint8))


@torch.no_grad()
def test_a_single_image_to_a_video_checkpoint_gets_the_first_temporal_embedding(tmp_path):
    cfg = GitConfig.preset("tiny-video")  # 3 frames, 32 px
    d = checkpoint(tmp_path, "tiny-video")
    model = GIT(cfg).eval()
    torch.manual_seed(0)
    for t in model.img_proj.temporal_embed:  # distinct, O(1) embeddings, so using the wrong one shows
        t.normal_()
    pixels = Processor.from_pretrained(d, compat="original")(images=noise(50, 40)).pixel_values
    assert pixels.shape == (1, 1, 3, 32, 32)
    got = model.encode_image(pixels)
    feats = model.vision(pixels[:, 0])  # (1, N1, Dv)
    first, second = (model.img_proj(feats + model.img_proj.temporal_embed[i]) for i in (0, 1))
    # The same operations on the same shapes: exact in practice; 1e-6 would allow a reordered sum, while the
    # wrong embedding moves features by O(1).
    torch.testing.assert_close(got, first, atol=1e-6, rtol=0)
    assert (got - second).abs().max() > 0.1
    assert Processor.from_pretrained(d, compat="original").pixel_values(noise(50, 40)).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- questions and settings


def test_questions_keep_the_first_40_wordpieces_then_the_last_38(tmp_path):
    assert original_question(list(range(45)), cls_id=-1) == [-1] + list(range(2, 40))
    d = checkpoint(tmp_path, "tiny")  # pad 0, bos 1, eos 2
    words = [f"w{i}" for i in range(50)]
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", *words]) + "\n")
    ids = {w: 5 + i for i, w in enumerate(words)}
    p = Processor.from_pretrained(d, compat="original")
    q45, q39, q10 = (" ".join(words[:n]) for n in (45, 39, 10))
    got = p(text=[q45, q39, q10]).input_ids.tolist()
    assert got[0] == [1] + [ids[w] for w in words[2:40]]  # first 40, then their last 38; no [SEP]
    assert got[1] == [1] + [ids[w] for w in words[1:39]]  # 39 is more than 38 too
    assert got[2] == [1] + [ids[w] for w in words[:10]] + [0] * 28  # short questions whole, right-padded
    transformers = Processor(tokenizer=p.tokenizer)(text=q45).input_ids
    assert transformers.shape == (1, 46)  # transformers' processor cuts nothing


def test_compat_names_and_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="compat must be one of 'transformers', 'original', got 'hf'"):
        Processor(compat="hf")
    checkpoint(tmp_path / "ok", "git-base")
    with pytest.raises(ValueError, match="compat must be one of"):
        Processor.from_pretrained(tmp_path / "ok", compat="Original")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json, which compat='original' reads the image size"):
        Processor.from_pretrained(tmp_path / "bare", compat="original")
    with pytest.raises(ValueError, match="compat='original' settings"):
        Processor(crop_size=480)
    with pytest.raises(ValueError, match="does not read image_config"):
        Processor(Processor().image_config, compat="original")
