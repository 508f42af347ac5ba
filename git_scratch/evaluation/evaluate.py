"""Evaluation (`git-scratch eval`): teacher-forced loss, generated captions and answers, and their scores.

    dataset rows ─▶ groups: one per image (captions) or per (image, question) (VQA), all their targets
               ├─▶ loss: both training losses (loss.py) under teacher forcing, mean over batches
               └─▶ generate once per group ─▶ BLEU-4, CIDEr-D, ROUGE-L, distinct captions / VQA accuracy

Results are written COCO-style: captions as [{"image_id", "caption"}], answers as
[{"question_id", "image_id", "question", "answer"}].
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import metrics
from ..data.batches import mean_losses
from ..data.shapes import VAL_OFFSET


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
    """One generated text per group (None where its image is unreadable), prompts excluded."""
    out: list[str | None] = []
    tok = processor.tokenizer
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="generate"):
        chunk = todo[start: start + batch_size]
        items = [data[g.index] for g in chunk]
        ok = [x for x in items if x is not None]
        texts = iter([])
        if ok:
            pixels = torch.from_numpy(processor.pixel_values([im for im, _, _ in ok])).to(model.device)
            prompts = [tok.encode(p) if p else [tok.cls_id] for _, p, _ in ok]
            ids = model.generate(pixels, prompts, **options)
            texts = iter(tok.decode(row[len(p):]).strip() for row, p in zip(ids.tolist(), prompts))
        out.extend(next(texts) if x is not None else None for x in items)
    return out


def evaluate(model, data, processor, batch_size: int = 16, progress: bool = True, **options) -> tuple[dict, dict]:
    """-> (scores, results): scores has the losses and, for captions, bleu4 / cider_d / rouge_l / distinct,
    for VQA vqa_accuracy; results the COCO-style lists {"captions": [...], "answers": [...]}."""
    model.eval()
    scores = mean_losses(model, data, processor, batch_size)
    todo = groups(data)
    texts = generate_all(model, data, processor, todo, batch_size, progress, **options)
    done = [(g, t) for g, t in zip(todo, texts) if t is not None]
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


# ----------------------------------------------------------------------------- command line


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch eval` on the CLI's subparsers."""
    p = sub.add_parser("eval", help="score a checkpoint: loss, BLEU-4, CIDEr-D, ROUGE-L, VQA accuracy",
                       description="Evaluate a checkpoint on 'shapes' or an annotation file (.jsonl, .csv, COCO "
                                   ".json). Prints the scores as one JSON line.",
                       epilog="examples:\n  git-scratch eval shapes --checkpoint runs/shapes/step-002000\n"
                              "  git-scratch eval val.jsonl --checkpoint ckpt/ft --results val_results.json\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="'shapes', or an annotation file")
    p.add_argument("--checkpoint", "-c", required=True)
    p.add_argument("--images", help="image folder (default: the annotation file's folder)")
    p.add_argument("--results", metavar="FILE.json", help="write the generated captions / answers, COCO style")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--task", default="both", choices=("caption", "vqa", "both"), help="shapes: what to score")
    p.add_argument("--shapes-samples", type=int, default=500)
    p.add_argument("--shapes-offset", type=int, default=VAL_OFFSET, help="shapes: first seed (default: unseen in training)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from ..data.datasets import ShapesDataset, load_dataset
    from ..load import load
    from ..preprocessing.processor import Processor

    try:
        model = load(args.checkpoint, device=args.device)
        processor = Processor.from_pretrained(args.checkpoint)
        if args.data == "shapes":
            data = ShapesDataset(args.shapes_samples, args.task, offset=args.shapes_offset)
        else:
            data = load_dataset(args.data, args.images)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if processor.tokenizer is None:
        print(f"error: {args.checkpoint} has no tokenizer files", file=sys.stderr)
        return 2
    scores, results = evaluate(model, data, processor, args.batch_size, not args.no_progress,
                               max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(scores))
    return 0
