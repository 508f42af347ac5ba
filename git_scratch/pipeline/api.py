"""`caption(images, model="demo")` and `answer(images, questions, model="demo")`: a model by name, its inputs
preprocessed, batched and decoded, in one call; what transformers' `pipeline` users expect.

    import git_scratch
    git_scratch.caption("cat.jpg")      # [{"question": None, "text": "a cat on a sofa", "ids": [...], "score": ...}]
    git_scratch.caption(["cat.jpg", pil_image], model="ckpt/git-base-coco", num_beams=3)
    git_scratch.answer(pil_image, ["what color is the circle?", "how many shapes are there?"])

An image is a path, a PIL image, a uint8 numpy array (H, W) or (H, W, 1|3|4), or a uint8 tensor (1|3|4, H, W)
as torchvision.io.read_image gives it; already-preprocessed pixel_values go to `GIT.generate` instead.
A record is what `caption --json` and `vqa --json` print less "input", "file" and "settings": for the same image
and options, the same text, ids and score. Each batch of images is encoded once for all its questions, as
the command line does (cli/batch.py), so the numbers are the same.
The opened model is kept (`opened`, the last two names and options) and reused by the next call;
`opened.cache_clear()` forgets it (after a checkpoint folder was overwritten, say).
"""

from __future__ import annotations

import sys
import warnings
from functools import lru_cache

import numpy as np
import torch
from tqdm import tqdm

from ..evaluation.records import ask, prompt
from ..generation.options import GenerationOptions
from ..sources.open import Opened, open_model


def caption(images, model="demo", *, batch_size: int = 8, progress: bool | None = None, seed: int | None = None,
            device="auto", dtype=None, quantize=None, compat: str = "transformers", **decoding) -> list[dict]:
    """A caption of each image: always a list of {"question": None, "text", "ids", "score"}, in input order
    (one image or a list of them; see the module docstring).

    model: any name `sources.resolve` takes ("demo", a folder, a hub id); device, dtype, quantize, compat as
    `open_model` takes them. decoding: generate's options (max_new_tokens, num_beams, do_sample, temperature,
    top_k, top_p, ...; num_return_sequences=k gives k records an image). seed: with do_sample, each image draws
    from its own generator seeded with it (the command line's --seed). progress: a bar on stderr; None shows
    it when the images fill more than one batch."""
    return run(images, [None], batch_size, progress, seed, decoding, model=model, device=device, dtype=dtype,
               quantize=quantize, compat=compat)


def answer(images, questions, model="demo", *, batch_size: int = 8, progress: bool | None = None,
           seed: int | None = None, device="auto", dtype=None, quantize=None, compat: str = "transformers",
           **decoding) -> list[dict]:
    """The answer to each question (a string or a list) about each image: always a list of {"question", "text",
    "ids", "score"}, image-major (image 0's answers, then image 1's, ...). Options as `caption`'s."""
    questions = [questions] if isinstance(questions, str) else list(questions)
    if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise ValueError(f"questions must be one or more non-empty strings, got {questions!r}")
    return run(images, questions, batch_size, progress, seed, decoding, model=model, device=device, dtype=dtype,
               quantize=quantize, compat=compat)


@lru_cache(maxsize=2)
def opened(model, device="auto", dtype=None, quantize=None, compat: str = "transformers") -> Opened:
    """`open_model`, kept: a second call with the same arguments returns the same model, not a new load.
    What loading said (a checkpoint without preprocessing settings, say) is warned once, here."""
    o = open_model(model, device, dtype, quantize, compat=compat)
    for said in o.warnings:
        warnings.warn(said, stacklevel=4)
    return o


def run(images, questions: list[str | None], batch_size: int, progress: bool | None, seed: int | None,
        decoding: dict, **opening) -> list[dict]:
    """The records of every image (a list, or one) for every question, image-major, in batches of batch_size;
    `opening`: what `opened` takes."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    decoding = {**decoding, "compat": opening["compat"]}  # "original": the original's beam search (original.py)
    if decoding["compat"] != "original":  # whose options generate checks when it runs
        GenerationOptions(**decoding)  # the shared checks, before anything is loaded
    if seed is not None and not decoding.get("do_sample"):
        raise ValueError("seed needs do_sample: without it decoding is greedy (or beam search) and it would be ignored")
    m = opened(**opening)
    # seeded samples, and images that keep their aspect ratio (compat="original" VQA), run one at a time
    size = 1 if seed is not None or m.processor.max_size is not None else batch_size
    prompts = [prompt(m.processor, q, m.model.device) for q in questions]
    recs = []
    show = len(images) > size if progress is None else progress
    with tqdm(total=len(images) * len(questions), file=sys.stderr, unit="input", disable=not show) as bar:
        for start in range(0, len(images), size):
            batch = [as_image(im) for im in images[start : start + size]]
            with torch.inference_mode():
                pixels = m.processor(images=batch).pixel_values.to(m.model.device, m.model.dtype)
                image = m.model.encode_image(pixels)  # (B, N, D): encoded once for all the questions
                recs += ask_all(m, image, prompts, questions, seed, decoding)
            bar.update(len(batch) * len(questions))
    return recs


def ask_all(m: Opened, image: torch.Tensor, prompts: list[torch.Tensor], questions: list[str | None],
            seed: int | None, decoding: dict) -> list[dict]:
    """Records of each row of `image` (B, N, D) for each question, image-major (records.ask). Sampling asks one
    question a call, each with its own draws, as the command line does (cli/batch.py, Runner.run_batch)."""
    k = decoding.get("num_return_sequences", 1)  # records per (image, question)
    if decoding.get("do_sample") and len(questions) > 1:
        each = [ask_all(m, image, [p], [q], seed, decoding) for p, q in zip(prompts, questions)]
        return [rec for i in range(len(image)) for one in each for rec in one[i * k : (i + 1) * k]]
    generator = None if seed is None else torch.Generator(m.model.device).manual_seed(seed)
    return ask(m.model, m.processor.tokenizer, image, prompts, questions, generator=generator, **decoding)


def as_image(image):
    """An image as the Processor takes it: a uint8 tensor (C, H, W) becomes an (H, W, C) array."""
    if not torch.is_tensor(image):
        return image
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"image tensors must be uint8 (C, H, W), C 1, 3 or 4, as torchvision.io.read_image gives "
                         f"them, got {image.dtype} {tuple(image.shape)}; give pixel_values to GIT.generate")
    return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
