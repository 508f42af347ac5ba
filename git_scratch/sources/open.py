"""`open_model(NAME, ...)`: a model by any name (sources.resolve), its processor, and how it computes, checked
together; what every command, the server and the one-call API run. A torch checkpoint loads with `load` under
one Precision (precision.py); an `export-onnx` folder runs its float32 graphs on onnxruntime (OnnxGIT).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ..data.batches import check_tokenizer
from ..evaluation.records import checkpoint_fingerprint
from ..export.runtime import OnnxGIT, is_export
from ..load import load
from ..precision import Precision, check_device, precision
from ..preprocessing.processor import PILLOW_LIMIT, Processor
from . import resolve


@dataclass
class Opened:
    """A model ready to run: what `open_model` returns."""

    model: object  # GIT, or OnnxGIT for an export-onnx folder (the same generate interface)
    processor: Processor
    path: Path  # the folder it was loaded from
    precision: Precision
    warnings: list[str]  # what loading it said (no preprocessing settings, a converted folder's notes)

    @property
    def onnx(self) -> bool:
        return isinstance(self.model, OnnxGIT)

    @property
    def room(self) -> int:
        """The model's text positions: a prompt and its new tokens share them (generation/checks.py)."""
        return self.model.config.text.max_positions

    def settings(self) -> dict:
        """What a result records of the model: the checkpoint's fingerprint and the precision it ran in."""
        return {"checkpoint": checkpoint_fingerprint(self.path), **self.precision.settings()}


def open_model(name, device="auto", dtype=None, quantize=None, compile: bool = False, compat: str = "transformers",
               max_pixels: int | None = None, video: bool = False) -> Opened:
    """The model `name` names (sources.resolve: demo, a folder, a Hugging Face folder or hub id), loaded on
    `device` as precision(device, dtype, quantize) says, with its processor; ValueError, one line starting
    "cannot load checkpoint:", for anything that cannot run (before any input is read). `video`: the run
    takes videos (a video checkpoint is required; an image checkpoint's ONNX export refuses videos)."""
    check_device(device)
    with warnings.catch_warnings(record=True) as caught:  # a Hugging Face folder's conversion notes
        warnings.simplefilter("always")
        try:
            path = resolve(name)
        except ValueError as e:
            raise ValueError(f"cannot load checkpoint: {e}") from None
    said = [str(w.message) for w in caught]
    bad = f"cannot load checkpoint: {path}:"
    onnx = is_export(path)
    torch_only = [flag for flag, on in (("--compile", compile), (f"--quantize {quantize}", quantize),
                                        (f"--dtype {dtype}", dtype not in (None, "float32", "auto"))) if on]
    if onnx and torch_only:
        raise ValueError(f"{bad} an ONNX export runs its float32 graphs on onnxruntime; {torch_only[0]} is for "
                         "torch checkpoints")
    try:
        p = precision(device, None if onnx else dtype, quantize)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = OnnxGIT(path, device) if onnx else load(path, device=device, dtype=dtype, quantize=quantize)
            processor = Processor.from_pretrained(path, PILLOW_LIMIT if max_pixels is None else max_pixels,
                                                  compat=compat)
        said += [str(w.message) for w in caught]  # e.g. no preprocessing settings: which defaults are used
    except ImportError:  # OnnxGIT without onnxruntime
        raise ValueError(f"{bad} an ONNX export runs on onnxruntime: pip install 'git_scratch[onnx]'") from None
    except (OSError, ValueError, RuntimeError) as e:  # load's messages name the file at fault
        raise ValueError(f"cannot load checkpoint: {' '.join(str(e).split()) or type(e).__name__}") from None
    cfg = model.config
    if onnx and processor.max_size is not None:
        raise ValueError(f"{bad} --compat original keeps this checkpoint's image aspect ratios; its ONNX export "
                         "takes the one image size it was exported with: run the torch checkpoint")
    if onnx and cfg.n_frames and not video:
        raise ValueError(f"{bad} the ONNX export of a video checkpoint takes videos ({cfg.n_frames} frames): use "
                         "`git-scratch video`, or the torch checkpoint for single images")
    if video and not cfg.n_frames:
        raise ValueError(f"{bad} not a video checkpoint (no num_image_with_embedding); use one converted from "
                         "e.g. microsoft/git-base-vatex, or caption single frames with `git-scratch caption`")
    try:
        check_tokenizer(processor, cfg.text.vocab_size, "the checkpoint")
    except ValueError as e:
        raise ValueError(f"{bad} {str(e).removeprefix('the checkpoint: ')}") from None
    return Opened(model, processor, path, p, said)
