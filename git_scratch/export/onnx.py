"""`export_checkpoint`: a git_scratch checkpoint as an ONNX folder that is itself a checkpoint.

    OUT_DIR/
      image_encoder.onnx   image_prefill.onnx   decoder_step.onnx     the graphs (graphs.py: what each computes)
      onnx_export.json                                               what was exported, by what, the graphs' I/O
      config.json  preprocessor_config.json  tokenizer.json ...      copied from the checkpoint

Exported with torch.onnx.export(dynamo=True): torch.export traces the model with symbolic sizes, so the
batch, row, new-token and slot counts stay symbols through every reshape (einops' included) and come out as
named dynamic axes. The TorchScript exporter (dynamo=False) records Python arithmetic on sizes as constants,
which would fix those axes at the example's sizes without a word. Each graph passes onnx.checker before the
folder counts as written; `compare` runs onnxruntime once beside torch. Shapes: the legend in model.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch

from .. import fast
from ..constants import PREPROCESSOR_FILES, TOKENIZER_FILES
from ..load import load
from ..model import GIT
from . import GRAPH_FILES, MANIFEST, OPSET
from .graphs import DecoderStep, ImageEncoder, ImagePrefill

BIG = 1_800_000_000  # bytes of weights above which a graph keeps them in a .data file (protobuf stops at 2 GiB)


def examples(model: GIT) -> dict[str, tuple]:
    """Each graph's example inputs, with every dynamic size distinct (2 images, 3 rows each, 4 tokens, 7 slots)
    so that no two axes are taken for one."""
    cfg, t = model.config, model.config.text
    v = cfg.vision
    Bi, K, n, S = 2, 3, 4, 7
    frames = (cfg.n_frames,) if cfg.n_frames else ()  # a video checkpoint's encoder takes all its frames
    pixels = torch.zeros(Bi, *frames, v.n_channels, v.image_size, v.image_size)
    image = torch.zeros(Bi, cfg.n_img_tokens, t.dim)
    image_kv = torch.zeros(t.n_layers, 2, Bi, t.n_heads, cfg.n_img_tokens, t.dim // t.n_heads)
    text_kv = torch.zeros(t.n_layers, 2, Bi, K, t.n_heads, S, t.dim // t.n_heads)
    ids = torch.full((Bi, K, n), t.bos_id, dtype=torch.long)
    start, last = torch.zeros(Bi, K, dtype=torch.long), torch.full((Bi, K), n - 1, dtype=torch.long)
    return {"image_encoder.onnx": (pixels,), "image_prefill.onnx": (image,),
            "decoder_step.onnx": (ids, start, last, text_kv, image_kv)}


def io_names() -> dict[str, tuple[list[str], list[str]]]:
    """Each graph's (input names, output names): graphs.py's argument names, which runtime.py feeds."""
    return {"image_encoder.onnx": (["pixel_values"], ["image"]),
            "image_prefill.onnx": (["image"], ["image_kv"]),
            "decoder_step.onnx": (["ids", "start", "last", "text_kv", "image_kv"], ["logits", "text_kv_out"])}


def dynamic_axes() -> dict[str, dict[str, dict[int, torch.export.Dim]]]:
    """The symbolic sizes of each graph's inputs (torch.export's dynamic_shapes): Bi images, K rows per image,
    n new tokens per row, S text slots. The image size, frames, N and the widths are the checkpoint's."""
    Dim = torch.export.Dim
    Bi, K, n, S = Dim("Bi"), Dim("K"), Dim("n"), Dim("S")
    return {"image_encoder.onnx": {"pixel_values": {0: Bi}},
            "image_prefill.onnx": {"image": {0: Bi}},
            "decoder_step.onnx": {"ids": {0: Bi, 1: K, 2: n}, "start": {0: Bi, 1: K}, "last": {0: Bi, 1: K},
                                  "text_kv": {2: Bi, 3: K, 5: S}, "image_kv": {2: Bi}}}


@contextlib.contextmanager
def quiet():
    """torch.onnx's progress prints (on stdout) and its warnings about what the user cannot change, hidden."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def export_graphs(model: GIT, out: Path, opset: int = OPSET, log: Callable[[str], None] = print,
                  names: tuple[str, ...] = GRAPH_FILES) -> None:
    """The graphs `names` (default all three) of the plain `model` (GIT(config), or load(..., fast_paths=False):
    fast.py's kernel swaps mean nothing in a graph) into the folder `out`, each checked by onnx.checker."""
    import onnx

    if fast.applied(model):
        raise ValueError("export a plain model: load(..., fast_paths=False), not one with fast.py's speed tricks")
    modules = {"image_encoder.onnx": ImageEncoder(model), "image_prefill.onnx": ImagePrefill(model),
               "decoder_step.onnx": DecoderStep(model)}
    io, axes, inputs = io_names(), dynamic_axes(), examples(model)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > BIG
    for name in names:
        log(f"exporting {name}")
        with torch.no_grad(), quiet():
            program = torch.onnx.export(modules[name].eval(), inputs[name], dynamo=True, opset_version=opset,
                                        input_names=io[name][0], output_names=io[name][1],
                                        dynamic_shapes=axes[name], verbose=False)
        program.save(str(out / name), external_data=big)
        onnx.checker.check_model(str(out / name), full_check=True)  # by path: graphs over 2 GiB too


def manifest(model: GIT, source: Path, opset: int) -> dict:
    """What onnx_export.json says: the graphs' inputs and outputs with their axes, and what made them."""
    import onnx

    cfg, t = model.config, model.config.text
    N, H, Dh, L = cfg.n_img_tokens, t.n_heads, t.dim // t.n_heads, t.n_layers
    frames = f"{cfg.n_frames}, " if cfg.n_frames else ""
    v = cfg.vision
    shapes = {
        "image_encoder.onnx": {"pixel_values": f"(Bi, {frames}{v.n_channels}, {v.image_size}, {v.image_size})",
                               "image": f"(Bi, {N}, {t.dim})"},
        "image_prefill.onnx": {"image": f"(Bi, {N}, {t.dim})", "image_kv": f"({L}, 2, Bi, {H}, {N}, {Dh})"},
        "decoder_step.onnx": {"ids": "(Bi, K, n) int64", "start": "(Bi, K) int64", "last": "(Bi, K) int64",
                              "text_kv": f"({L}, 2, Bi, K, {H}, S, {Dh})",
                              "image_kv": f"({L}, 2, Bi, {H}, {N}, {Dh})", "logits": f"(Bi, K, {t.vocab_size})",
                              "text_kv_out": f"({L}, 2, Bi, K, {H}, S, {Dh})"},
    }
    return {"format": "git_scratch onnx export", "version": 1, "source": str(source), "opset": opset,
            "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=True), onnx {onnx.__version__}",
            "dtype": "float32", "graphs": shapes}


def export_checkpoint(ckpt, out, opset: int = OPSET, log: Callable[[str], None] = print) -> GIT:
    """Export the checkpoint folder `ckpt` into the new folder `out` (created; it must not hold anything).
    Returns the torch model it exported, for `compare`."""
    ckpt, out = Path(ckpt), Path(out)
    log(f"loading {ckpt}")
    model = load(ckpt, device="cpu", fast_paths=False)  # the plain model: what the graphs trace
    out.mkdir(parents=True, exist_ok=True)
    export_graphs(model, out, opset, log)
    for name in ("config.json", *PREPROCESSOR_FILES, *TOKENIZER_FILES):  # what makes a folder a checkpoint
        if (ckpt / name).is_file():
            shutil.copyfile(ckpt / name, out / name)
    (out / MANIFEST).write_text(json.dumps(manifest(model, ckpt.resolve(), opset), indent=2) + "\n")
    return model


def _two_steps(model, make, pixels, ids) -> torch.Tensor:
    """Logits (2, V): a prompt's last and one decode step after it, through decoder `make` (decoders.py's
    interface) on one image."""
    image = model.encode_image(pixels)
    dec = make(model, image, 1, model.mask(image.shape[1], ids.shape[1] + 1))
    lengths = torch.tensor([ids.shape[1]])
    return torch.cat([dec.prefill(ids, lengths), dec.decode_step(ids[:, -1], lengths)])


@torch.no_grad()
def compare(model: GIT, out, n_tokens: int = 3) -> tuple[float, float]:
    """(largest |logit| difference between onnxruntime on the folder `out` and torch's cached decoder, largest
    |logit| of torch's), over one image's prompt of `n_tokens` and one decode step after it (seed 0)."""
    from ..generation.decoders import Cached
    from .runtime import OnnxCached, OnnxGIT

    cfg = model.config
    v, t = cfg.vision, cfg.text
    g = torch.Generator().manual_seed(0)
    frames = (cfg.n_frames,) if cfg.n_frames else ()
    pixels = torch.randn(1, *frames, v.n_channels, v.image_size, v.image_size, generator=g)
    ids = torch.randint(0, t.vocab_size, (1, n_tokens), generator=g)
    ids[:, 0] = t.bos_id
    ort, expected = _two_steps(OnnxGIT(out), OnnxCached, pixels, ids), _two_steps(model, Cached, pixels, ids)
    return float((ort - expected).abs().max()), float(expected.abs().max())
