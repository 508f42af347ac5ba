"""Evaluation (`git-scratch eval`): teacher-forced loss, generated captions and answers, and their scores.

    dataset rows ─▶ groups: one per image (captions) or per (image, question) (VQA), all their targets
               ├─▶ loss: both training losses (loss.py) under teacher forcing, mean over batches
               └─▶ generate once per group ─▶ BLEU-4, CIDEr-D, ROUGE-L, distinct captions / VQA accuracy

Results are written COCO-style: captions as [{"image_id", "caption"}], answers as
[{"question_id", "image_id", "question", "answer"}]. Evaluating nothing is an error, never a score: data
with no row, or none whose image can be read, is a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

import torch
from tqdm import tqdm

from . import metrics
from ..data.batches import mean_losses
from ..data.datasets import ShapesDataset, load_dataset
from ..data.shapes import VAL_OFFSET
from ..generation.cache_check import cache_mismatch
from ..generation.checks import room_error
from ..generation.options import GenerationOptions
from ..preprocessing.processor import Processor
from ..quantize import Int8Linear


@dataclass
class EvalOptions:
    """What `git-scratch eval` scores and how: `prepare` reads the data, `evaluate` takes the rest."""

    data: str  # "shapes" (the built-in task), or an annotation file (.jsonl, .csv, COCO .json)
    checkpoint: str  # a name (sources.resolve): demo, a folder, a Hugging Face folder or hub id
    images: str | None = None  # image folder; None: the annotation file's folder
    results: str | None = None  # a file for the COCO-style captions and answers; None: not written
    batch_size: int = 16
    max_new_tokens: int = 20
    num_beams: int = 1
    task: str = "both"  # shapes: "caption", "vqa" or "both"
    shapes_samples: int = 500
    shapes_offset: int = VAL_OFFSET  # shapes: the first seed (default: unseen in training)
    device: str = "auto"
    dtype: str = "float32"  # precision.py: the choices
    quantize: str | None = None
    cache_check: bool = True  # first: cached decoding of a few images must equal the uncached rollout
    progress: bool = True


@dataclass
class Group:
    image_id: object  # COCO id, image path, or shapes seed
    index: int  # a dataset row with this image and prompt
    prompt: str  # "" for captions
    targets: list[str] = field(default_factory=list)  # references, or the human answers


def groups(data) -> list[Group]:
    """Rows with the same image and prompt, their targets together (several references per image)."""
    by_key: dict[tuple, Group] = {}
    for i in range(len(data)):
        image_id, prompt, target = data.describe(i)
        g = by_key.setdefault((image_id, prompt), Group(image_id, i, prompt))
        g.targets.append(target)
    return list(by_key.values())


@torch.no_grad()
def generate_all(model, data, processor, todo: list[Group], batch_size: int, progress: bool = True,
                 **options) -> list[str | None]:
    """One generated text per group (None where its image is unreadable), prompts excluded. An image asked
    several questions in a batch is read and encoded once (VQA sets ask ~5 questions an image)."""
    out: list[str | None] = []
    tok = processor.tokenizer
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="generate"):
        chunk = todo[start: start + batch_size]
        first = {g.image_id: g for g in reversed(chunk)}  # image id -> the first group asking about it
        read = {i: data[g.index] for i, g in reversed(first.items())}  # (image, prompt, target) or None
        ok = [g for g in chunk if read[g.image_id] is not None]
        texts = iter([])
        if ok:
            place = {i: u for u, i in enumerate(dict.fromkeys(g.image_id for g in ok))}  # image id -> its row
            pixels = torch.from_numpy(processor.pixel_values([read[i][0] for i in place])).to(model.device, model.dtype)
            image = model.encode_image(pixels)  # (U, N, D): each image once
            order = sorted(range(len(ok)), key=lambda j: place[ok[j].image_id])  # image-major, as generate takes
            counts = [0] * len(place)
            for g in ok:
                counts[place[g.image_id]] += 1
            prompts = [tok.encode(ok[j].prompt) if ok[j].prompt else [tok.cls_id] for j in order]
            text_of = dict(zip(order, generated_texts(model, tok, image, prompts, prompts_per_image=counts,
                                                      **options)))
            texts = iter([text_of[j] for j in range(len(ok))])
        out.extend(next(texts) if read[g.image_id] is not None else None for g in chunk)
    return out


def generated_texts(model, tok, image, prompts: list[list[int]], **options) -> list[str]:
    """The new text of each prompt (a list of ids, [CLS] first) about `image` (Bi, N, D) from model.encode_image,
    `options` as generate takes them (prompts_per_image: how many of the prompts, image-major, are each image's;
    each image goes through the decoder once for all of them); stripped, the prompt left out."""
    ids = model.generate(image=image, input_ids=prompts, **options).tolist()
    width = max(map(len, prompts))  # the prompts come back left-padded to one width, then the new tokens
    return [tok.decode(row[width:]).strip() for row in ids]


def evaluate(model, data, processor, batch_size: int = 16, progress: bool = True, cache_check: bool = True,
             **options) -> tuple[dict, dict]:
    """-> (scores, results): scores has the losses and, for captions, bleu4 / cider_d / rouge_l / distinct,
    for VQA vqa_accuracy; results the COCO-style lists {"captions": [...], "answers": [...]}.
    ValueError, before any compute where it can be, for no readable example or a question too long to answer,
    and (`cache_check`) when cached decoding of the first few images differs from the uncached rollout."""
    todo = groups(data)
    nothing = f"no readable example in {getattr(data, 'source', '') or 'the data'}"
    if not todo:
        raise ValueError(nothing)
    check_room(model, processor, todo, options.get("max_new_tokens", GenerationOptions.max_new_tokens),
               getattr(data, "source", ""))
    model.eval()
    if cache_check:
        check_cache(model, data, processor, todo)
    scores = mean_losses(model, data, processor, batch_size)  # ValueError when every image is unreadable
    texts = generate_all(model, data, processor, todo, batch_size, progress, **options)
    done = [(g, t) for g, t in zip(todo, texts) if t is not None]
    if not done:  # an image that went unreadable between the losses and generation
        raise ValueError(nothing)
    captions = [(g, t) for g, t in done if not g.prompt]
    answers = [(g, t) for g, t in done if g.prompt]
    if captions:
        refs = {g.image_id: g.targets for g, _ in captions}
        hyps = {g.image_id: t for g, t in captions}
        scores.update(metrics.caption_scores(refs, hyps))
    if answers:
        scores["vqa_accuracy"] = sum(metrics.vqa_accuracy(t, g.targets) for g, t in answers) / len(answers)
        scores["n_questions"] = len(answers)
    scores["skipped"] = len(getattr(data, "skipped", []))
    results = {"captions": [{"image_id": g.image_id, "caption": t} for g, t in captions],
               "answers": [{"question_id": i, "image_id": g.image_id, "question": g.prompt, "answer": t}
                           for i, (g, t) in enumerate(answers)]}
    return scores, results


CACHE_CHECK_IMAGES = 4


def check_cache(model, data, processor, todo: list[Group]) -> None:
    """ValueError when cached greedy captions of the first few readable images differ from the uncached ones.
    Not for an int8 model: its activations are scaled per call over all the call's rows, so a decode step and
    the full forward round differently and need not agree to the id (quantize.py)."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        return
    read = (data[g.index] for g in {g.image_id: g for g in todo}.values())  # one row per image, read lazily
    images = list(islice((r[0] for r in read if r is not None), CACHE_CHECK_IMAGES))
    if images:
        pixels = torch.from_numpy(processor.pixel_values(images)).to(model.device, model.dtype)
        if why := cache_mismatch(model, pixels):
            raise ValueError(f"{why}; --no-cache-check skips this check")


def check_room(model, processor, todo: list[Group], max_new_tokens: int, source: str = "") -> None:
    """ValueError unless the longest prompt ([CLS] + question) and `max_new_tokens` fit the model's text
    positions: said before any compute, not by generate after the losses."""
    n = max(len(processor.tokenizer.encode(g.prompt)) if g.prompt else 1 for g in todo)
    if why := room_error(n, max_new_tokens, model.config.text.max_positions):
        raise ValueError(f"{source}: {why}" if source else why)


def prepare(opts: EvalOptions, processor: Processor):
    """The data `opts` names, read with `processor` (images checked as caption checks them); ValueError or
    OSError says what is wrong. The model is opened by the caller (cli/evaluate.py: sources.open_model)."""
    if opts.data == "shapes":
        return ShapesDataset(opts.shapes_samples, opts.task, offset=opts.shapes_offset)
    return load_dataset(opts.data, opts.images, processor=processor)
