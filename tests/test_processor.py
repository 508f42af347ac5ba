"""git_scratch.processor against transformers' CLIPImageProcessorPil, the image processor GIT ships with.

Tolerance: our pipeline repeats transformers' PIL backend operation for operation (the same
Pillow resize on the same uint8 image, the same crop offsets, rescale in float64 then cast,
normalise in float32), so the expected difference is exactly 0. We allow 1e-6, the size of
one float32 rounding step at these magnitudes (|x| < 3), so that a different but still
correct order of float32 operations would not fail; one grey level is 1/255/0.27 ~ 1.5e-2,
four orders of magnitude larger, so any real pixel difference fails.
"""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from git_scratch.preprocessing.pixels import CLIP_MEAN, CLIP_STD, ImageConfig
from git_scratch.preprocessing.processor import ImageLoadError, Processor, load_image

TOL = 1e-6  # see the module docstring

# microsoft/git-base's preprocessor_config.json, as Hugging Face writes it.
GIT_BASE = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(CLIP_MEAN),
    "image_processor_type": "CLIPImageProcessor", "image_std": list(CLIP_STD), "processor_class": "GitProcessor",
    "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224},
}
# Other shapes of the same file, to exercise every branch: exact (h, w) resize with no crop,
# a crop larger than the resized image (zero padding), old int-valued size/crop_size, bilinear.
CONFIGS = {
    "git-base": GIT_BASE,
    "height-width-no-crop": {**GIT_BASE, "size": {"height": 160, "width": 200}, "do_center_crop": False},
    "crop-bigger-than-resize": {**GIT_BASE, "size": {"shortest_edge": 96}, "crop_size": {"height": 128, "width": 112},
                                "resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.25, 0.125]},
    "int-sizes-no-resize": {**GIT_BASE, "size": 64, "crop_size": 64, "do_resize": False, "rescale_factor": 0.004},
}

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "retina.jpg", "camera.png", "horse.png",
          "logo.png", "microaneurysms.png", "no_time_for_that_tiny.gif", "multipage.tif"]
SIZES = [(1, 1), (4, 90), (90, 4), (224, 224), (225, 223), (100, 37), (37, 300), (480, 640)]  # (w, h), 1:22 to 1:1


def write_config(d: Path, cfg: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "preprocessor_config.json").write_text(json.dumps(cfg))
    return d


def pair(d: Path):
    """(ours, transformers') processors read from the same checkpoint directory."""
    from transformers import CLIPImageProcessorPil

    return Processor.from_pretrained(d), CLIPImageProcessorPil.from_pretrained(d)


def max_diff(ours: Processor, hf, image) -> float:
    a = ours(images=image, return_tensors="np")["pixel_values"]
    b = hf(images=image, return_tensors="np")["pixel_values"]
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    return float(np.abs(a - b).max())


def make_image(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth gradient plus noise (so resampling filters matter) in the given Pillow mode."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    rgb = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    alpha = Image.fromarray((np.arange(w)[None, :].repeat(h, 0) * 255 // max(w - 1, 1)).astype(np.uint8))
    if mode == "RGBA":  # alpha ramps 0 -> 255 left to right: partial transparency everywhere
        im.putalpha(alpha)
    elif mode == "LA":
        im = im.convert("L")
        im.putalpha(alpha)
    elif mode == "P+transparency":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        im.info["transparency"] = 3
    elif mode == "I":
        im = Image.fromarray(np.asarray(im.convert("L")).astype(np.int32))  # values <= 255: Pillow's path
    else:
        im = im.convert(mode)
    return im


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("config", CONFIGS)
def test_pixels_match_transformers_on_every_mode_and_aspect_ratio(tmp_path, config):
    ours, hf = pair(write_config(tmp_path, CONFIGS[config]))
    # without resize the output keeps the input size; big ones add only time
    sizes = [(w, h) for w, h in SIZES if config != "int-sizes-no-resize" or w * h <= 50_000]
    diffs = {}
    for mode in ["RGB", "L", "LA", "RGBA", "P", "P+transparency", "CMYK", "1", "I", "F"]:
        for w, h in sizes:
            diffs[mode, w, h] = max_diff(ours, hf, make_image(mode, w, h))
    print(f"{config}: max |ours - CLIPImageProcessorPil| over {len(diffs)} images = {max(diffs.values())}")
    assert {k: d for k, d in diffs.items() if d > TOL} == {}


def test_pixels_match_transformers_on_real_photographs(tmp_path, skdata):
    ours, hf = pair(write_config(tmp_path, GIT_BASE))
    diffs = {name: max_diff(ours, hf, Image.open(skdata / name)) for name in PHOTOS}
    print("max |ours - CLIPImageProcessorPil| per photo:", diffs)
    assert max(diffs.values()) <= TOL, diffs


def test_numpy_arrays_and_batches_match_transformers(tmp_path, skdata):
    ours, hf = pair(write_config(tmp_path, GIT_BASE))
    photo = np.asarray(Image.open(skdata / "chelsea.png"))  # (300, 451, 3) uint8
    rgba = np.asarray(Image.open(skdata / "horse.png"))  # (328, 400, 4): transformers' numpy compositing
    gray = np.asarray(Image.open(skdata / "camera.png"))[..., None]  # (512, 512, 1)
    for arr in (photo, rgba, gray):
        assert max_diff(ours, hf, arr) <= TOL
    assert max_diff(ours, hf, [photo, rgba, gray]) <= TOL


def test_a_list_mixing_paths_pil_and_arrays_stacks_in_order(skdata):
    p = Processor()
    path = skdata / "coffee.png"
    batch = p(images=[str(path), Image.open(path), np.asarray(Image.open(path)), path])
    assert batch.pixel_values.shape == (4, 3, 224, 224) and batch.pixel_values.dtype == torch.float32
    assert all(torch.equal(batch.pixel_values[0], x) for x in batch.pixel_values[1:])


def test_torchvision_backend_distance_is_measured_when_torchvision_imports(tmp_path, skdata):
    """transformers' default CLIPImageProcessor resizes with torchvision (antialiased tensors), not Pillow,
    so its pixels are close to, not equal to, the PIL backend's. This only measures and prints the
    distance; torchvision matching the installed torch is often unavailable, then this skips."""
    pytest.importorskip("torchvision", reason="torchvision not importable: torchvision backend not measured")
    from transformers import CLIPImageProcessor

    ours, pil = pair(write_config(tmp_path, GIT_BASE))
    tv = CLIPImageProcessor.from_pretrained(tmp_path)
    for name in PHOTOS:
        im = Image.open(skdata / name)
        t = tv(images=im, return_tensors="np")["pixel_values"]
        print(f"{name}: |torchvision - ours| = {np.abs(t - ours(images=im, return_tensors='np')['pixel_values']).max():.4f}"
              f"  |torchvision - pil| = {np.abs(t - pil(images=im, return_tensors='np')['pixel_values']).max():.4f}")


# ----------------------------------------------------------------------------- conversions we do on purpose


def test_exif_rotated_photo_is_turned_upright_like_transformers_does_for_paths(tmp_path, skdata):
    from transformers import CLIPImageProcessorPil

    upright = Image.open(skdata / "chelsea.png").crop((0, 0, 300, 200))  # landscape, not symmetric
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: portrait pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: display rotated 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)

    ours, hf = Processor(), CLIPImageProcessorPil()
    # The decoded pixels turned by hand, as an array so that no EXIF tag travels with them.
    expected = ours(images=np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270))).pixel_values
    assert torch.equal(ours(images=path).pixel_values, expected)
    assert torch.equal(ours(images=Image.open(path)).pixel_values, expected)  # EXIF also honoured on PIL input
    # transformers applies EXIF only when handed a path string, never for a PIL image.
    assert np.abs(hf(images=str(path), return_tensors="np")["pixel_values"] - expected.numpy()).max() <= TOL
    assert np.abs(hf(images=Image.open(path), return_tensors="np")["pixel_values"] - expected.numpy()).max() > 0.5


def test_transparent_png_is_composited_on_white_whether_given_as_path_or_pil(tmp_path):
    from transformers import CLIPImageProcessorPil

    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent black, with one opaque red square
    rgba[16:48, 16:48] = (255, 0, 0, 255)
    path = tmp_path / "logo.png"
    Image.fromarray(rgba).save(path)
    ours, hf = Processor(), CLIPImageProcessorPil()
    from_path = ours(images=path).pixel_values
    assert torch.equal(from_path, ours(images=Image.open(path)).pixel_values)
    corner = from_path[0, :, 0, 0]  # a transparent pixel: white after normalisation
    assert torch.allclose(corner, (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD), atol=TOL)
    # transformers composites a PIL image onto white, but its path route drops alpha (black here).
    assert np.abs(hf(images=Image.open(path), return_tensors="np")["pixel_values"] - from_path.numpy()).max() <= TOL
    assert hf(images=str(path), return_tensors="np")["pixel_values"][0, 0, 0, 0] < 0


def test_16bit_grayscale_is_scaled_to_8bit_not_clipped_white(tmp_path):
    from transformers import CLIPImageProcessorPil

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "depth16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    eight_bit = Image.fromarray(np.round(ramp / 257).astype(np.uint8))
    ours = Processor()(images=path, return_tensors="np")["pixel_values"]
    # We equal transformers fed the properly scaled 8-bit image ...
    assert np.abs(CLIPImageProcessorPil()(images=eight_bit, return_tensors="np")["pixel_values"] - ours).max() <= TOL
    # ... while transformers on the 16-bit file itself clips: over 99% of pixels come out pure white.
    white = (1 - CLIP_MEAN[0]) / CLIP_STD[0]
    clipped = CLIPImageProcessorPil()(images=Image.open(path), return_tensors="np")["pixel_values"][0, 0]
    assert np.isclose(clipped, white, atol=1e-5).mean() > 0.99


# ----------------------------------------------------------------------------- configuration


def test_missing_preprocessor_config_gives_git_published_defaults(tmp_path, skdata):
    from transformers import CLIPImageProcessorPil

    with pytest.warns(UserWarning, match="has no preprocessing settings") as caught:
        bare = Processor.from_pretrained(tmp_path)  # an empty checkpoint directory
    assert str(caught[0].message) == (
        f"{tmp_path} has no preprocessing settings (preprocessor_config.json or processor_config.json); using "
        "GIT's published defaults: shortest edge resized to 224 (bicubic), centre crop 224x224, CLIP mean and std")
    assert bare.image_config == ImageConfig.from_dict(GIT_BASE)
    assert (bare.image_config.size, bare.image_config.resample) == ({"shortest_edge": 224}, 3)
    im = Image.open(skdata / "rocket.jpg")
    assert max_diff(bare, CLIPImageProcessorPil(), im) <= TOL


def test_text_without_tokenizer_files_raises_a_clear_error(tmp_path):
    write_config(tmp_path, GIT_BASE)
    p = Processor.from_pretrained(tmp_path)
    message = f"{tmp_path} has no tokenizer (tokenizer.json or vocab.txt); text is unsupported"
    with pytest.raises(ValueError) as info:
        p(text="a photo of")
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        p.batch_decode([[101, 1037]])
    assert str(info.value) == message


def test_unsupported_size_key_is_rejected_naming_the_file(tmp_path):
    write_config(tmp_path, {**GIT_BASE, "size": {"longest_edge": 300}})
    with pytest.raises(ValueError) as info:
        Processor.from_pretrained(tmp_path)
    assert str(info.value) == (f"{tmp_path / 'preprocessor_config.json'}: size must be {{'shortest_edge': n}} or "
                               "{'height', 'width'}, got {'longest_edge': 300}")


# ----------------------------------------------------------------------------- text and video layout


def test_prompts_are_cls_plus_tokens_right_padded_with_zero(tmp_path, vocab_dir):
    from transformers import BertTokenizerFast

    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(vocab_dir / f, tmp_path / f)
    write_config(tmp_path, GIT_BASE)
    p = Processor.from_pretrained(tmp_path)
    texts = ["what is the man holding?", "a"]
    batch = p(images=np.zeros((32, 32, 3), np.uint8), text=texts)
    ref = BertTokenizerFast.from_pretrained(tmp_path)(texts, add_special_tokens=False).input_ids
    T = max(len(r) for r in ref) + 1
    expected = [[101] + r + [0] * (T - 1 - len(r)) for r in ref]  # [CLS] + tokens, no [SEP], pad id 0
    assert batch.input_ids.tolist() == expected and batch.input_ids.dtype == torch.int64
    assert batch.attention_mask.tolist() == [[int(t != 0) for t in row] for row in expected]
    assert p.batch_decode(batch.input_ids) == ["what is the man holding?", "a"]
    assert p.decode(batch.input_ids[1]) == "a"
    half = batch.to(dtype=torch.float16)
    assert half.pixel_values.dtype == torch.float16 and half.input_ids.dtype == torch.int64


def test_video_frames_come_out_as_one_clip(skdata):
    frames = [Image.open(skdata / n) for n in ("astronaut.png", "coffee.png", "camera.png")]
    clip = Processor().preprocess_frames(frames)
    assert clip.shape == (1, 3, 3, 224, 224)
    assert torch.equal(clip[0, 1], Processor()(images=frames[1]).pixel_values[0])


# ----------------------------------------------------------------------------- bad files


def one_line_error(path, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        Processor(**kw)(images=path)
    err = info.value
    assert isinstance(err, ValueError) and err.path == str(path) and str(err).startswith(str(path))
    assert "\n" not in str(err)
    return err


def test_truncated_jpeg_is_reported_with_its_path(tmp_path, skdata):
    data = (skdata / "rocket.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert one_line_error(path).reason.startswith("truncated or corrupt image data (")  # + Pillow's own words


def test_zero_byte_file_is_reported_as_empty(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    assert one_line_error(path).reason == "empty file (0 bytes)"


def test_text_file_named_jpg_is_reported_as_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    assert one_line_error(path).reason == "not an image Pillow can read"


def test_tiff_pillow_cannot_open_is_reported(skdata):
    assert one_line_error(skdata / "multipage_rgb.tif").reason == "not an image Pillow can read"


def test_missing_file_is_reported(tmp_path):
    assert one_line_error(tmp_path / "nope.png").reason == "no such file"


def test_image_over_the_pixel_budget_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 80)).save(path)
    err = one_line_error(path, max_pixels=5_000)
    assert err.reason == "100x80 = 8000 pixels is over the budget of 5000 (possible decompression bomb)"
    assert Processor(max_pixels=8_000)(images=path).pixel_values.shape == (1, 3, 224, 224)  # at the budget: fine


def test_pillow_decompression_bomb_error_becomes_image_load_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow raises past twice this
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning leaks out either
        err = one_line_error(path, max_pixels=None)
    assert "decompression" in err.reason
    between = tmp_path / "between.png"  # 1,500 pixels: over Pillow's limit, under its hard stop
    Image.new("L", (50, 30)).save(between)
    with pytest.raises(ImageLoadError, match="50x30 = 1500 pixels is over the budget of 1000"):
        load_image(between)  # default budget: Pillow's limit at call time


def _png(path: Path, w: int, h: int) -> Path:
    """A real w x h grey PNG, written by Pillow: a few hundred bytes even at 60000 x 1."""
    Image.new("L", (w, h), 128).save(path)
    return path


def test_an_extreme_aspect_ratio_is_refused_before_it_is_resized(tmp_path, monkeypatch):
    """60000 x 1 is 60,000 pixels in the file, but 13,440,000 x 224 once its short side is scaled to 224."""
    path = _png(tmp_path / "line.png", 60_000, 1)
    assert path.stat().st_size < 400
    resize = Image.Image.resize

    def guarded(self, size, *args, **kwargs):  # a resize this large is the bug itself: fail, do not allocate
        assert size[0] * size[1] <= 10_000_000, f"resized to {size}"
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded)
    err = one_line_error(path)
    assert err.reason == (f"60000x1 would be resized to 13440000x224 = 3010560000 pixels, over the budget of "
                          f"{Image.MAX_IMAGE_PIXELS} (an extreme aspect ratio)")
    with pytest.raises(ValueError) as info:  # a PIL image, not a file: the same check, a plain ValueError
        Processor(max_pixels=None)(images=Image.new("RGB", (2, 20_000)))
    assert str(info.value) == ("2x20000 would be resized to 224x2240000 = 501760000 pixels, over the budget of "
                               f"{Image.MAX_IMAGE_PIXELS} (an extreme aspect ratio)")
    wide = _png(tmp_path / "wide.png", 4000, 100)  # a panorama: 8960 x 224 resized, well under the budget
    assert Processor(max_pixels=500_000)(images=wide).pixel_values.shape == (1, 3, 224, 224)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # a larger budget of our own is the one that counts
    with pytest.raises(ValueError, match="= 501760000 pixels, over the budget of 500000000 "):
        Processor(max_pixels=500_000_000)(images=Image.new("RGB", (2, 20_000)))
