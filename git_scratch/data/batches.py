"""Batches for training and evaluation: (image, prompt, target) examples -> tensors, and their losses.

Shared by the training loop and `git-scratch eval`, so both count the same tokens the same way.
Shapes: the legend in model.py.
"""

from __future__ import annotations

import numpy as np
import torch

from ..loss import hf_loss, original_loss
from ..model import GIT
from ..preprocessing.pixels import preprocess
from ..preprocessing.processor import Processor
from ..preprocessing.truncation import example_ids


def collate(examples, processor: Processor) -> dict:
    """(image, prompt, target) triples -> pixel_values (B, 3, H, W), input_ids, attention_mask and
    need_predict (B, T), right-padded. Images go through the processor's resize and centre crop (training
    crops them first, in training/feed.py)."""
    return stack([example_arrays(*x, processor) for x in examples], processor.tokenizer.pad_id)


def example_arrays(image, prompt: str, target: str, processor: Processor) -> tuple[np.ndarray, list, list]:
    """One example as collate reads it: (pixels (3, H, W) float32, ids, need_predict), before padding. Training's
    worker processes make these, so the loop's own process only stacks them."""
    tok = processor.tokenizer
    pixels = preprocess(image.convert("RGB"), processor.image_config)
    prompt_ids = tok.encode(prompt)[1:] if prompt else []  # encode() puts [CLS] first
    ids, predict = example_ids(prompt_ids, tok.encode(target)[1:], tok.cls_id, tok.sep_id)
    return pixels, ids, predict


def stack(rows: list[tuple[np.ndarray, list, list]], pad_id: int) -> dict:
    """example_arrays rows -> the batch dict of collate, right-padded with pad_id."""
    T = max(len(ids) for _, ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    need, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (_, row, predict) in enumerate(rows):
        ids[i, : len(row)], need[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), torch.tensor(predict), 1
    return {"pixel_values": torch.from_numpy(np.stack([x for x, _, _ in rows])), "input_ids": ids,
            "attention_mask": mask, "need_predict": need}


def batch_loss(model: GIT, batch: dict, loss: str) -> torch.Tensor:
    """The training loss of one batch. Both modes count the same tokens (need_predict: the target and
    [SEP]); "hf" is plain cross-entropy over them, "original" the label-smoothed KL."""
    logits = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"]).logits  # (B, T, V)
    if loss == "hf":
        labels = batch["input_ids"].masked_fill(batch["need_predict"] == 0, -100)
        return hf_loss(logits, labels)
    return original_loss(logits, batch["input_ids"], batch["need_predict"])


def check_tokenizer(processor: Processor, vocab_size: int, name: str) -> None:
    """ValueError unless `processor` has a tokenizer whose every id the model can embed and predict (a
    larger one, another model's tokenizer files, would index past tok_embed and lm_head). vocab_size: the
    model's (config.text.vocab_size). `name`: the
    checkpoint or run the message names."""
    tok, vocab = processor.tokenizer, vocab_size
    if tok is None:
        raise ValueError(f"{name}: no tokenizer.json or vocab.txt, so ids cannot become text")
    if tok.vocab_size > vocab:
        raise ValueError(f"{name}: the tokenizer has {tok.vocab_size} tokens, the model {vocab}: tokenizer files "
                         "of another model?")


@torch.no_grad()
def mean_losses(model: GIT, data, processor: Processor, batch_size: int) -> dict:
    """Both training losses under teacher forcing, no augmentation, averaged over batches; unreadable rows
    are left out. Leaves the model in eval mode. ValueError when no example could be read: no data is an
    error, never a loss of 0."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model.eval()
    totals, n = {"loss_hf": 0.0, "loss_original": 0.0}, 0
    for start in range(0, len(data), batch_size):
        items = [x for x in (data[i] for i in range(start, min(start + batch_size, len(data)))) if x is not None]
        if not items:
            continue
        batch = {k: v.to(model.device) for k, v in collate(items, processor).items()}
        for name in ("hf", "original"):
            totals[f"loss_{name}"] += batch_loss(model, batch, name).item()
        n += 1
    if not n:
        raise ValueError(f"no readable example in {getattr(data, 'source', '') or 'the data'}")
    return {k: v / n for k, v in totals.items()}
