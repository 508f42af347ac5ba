"""Training: teacher-forced next-token loss over image-text pairs, resumable exactly.

    examples (image, prompt, target) ─▶ random resized crop ─▶ Processor ─▶ (pixels, ids, need_predict)
        ─▶ GIT ─▶ hf_loss or original_loss (loss.py) ─▶ AdamW (decay 0.01, none on norms and biases)
        ─▶ clip ─▶ warm-up + cosine ─▶ every `save_every` steps an atomic checkpoint (checkpoints.py)

Both losses read rows cut as the original's get_data cuts them (truncation.example_ids: a question + answer over
40 wordpieces keeps its last 38); compat="original" picks the original's loss.

`resume` restores every piece of state (weights, optimizer, scheduler, step, RNG states, data position),
so N + M steps in two runs give bit-identical parameters to N + M in one. The data order is a fresh
permutation per epoch, drawn from `seed` and the epoch number; augmentation draws from one
torch.Generator whose state is saved too. Progress goes to a tqdm bar (loss, lr, examples/s) and to
metrics.jsonl; curves.png plots the losses at the end. A TrainRun names the rest of a run (the model to start
from, the data, the run directory) and `prepare` builds it; cli/train.py reads both from the command line.

Under torchrun (distributed.py) the same loop runs on every rank inside DistributedDataParallel:
`batch_size` is the global micro-batch, every rank draws the same indices and takes its own slice
(next_share), each rank's loss is weighed so that the averaged gradient is the exact token mean of the
whole micro-batch, and rank 0 alone writes checkpoints, metrics.jsonl, curves.png and the progress bar.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from . import distributed
from .checkpoints import STATE, latest_checkpoint, rng_states, save_checkpoint, set_rng_states
from ..config import GitConfig
from ..constants import check_compat
from .curves import plot_curves
from ..init import init_weights
from ..load import fast_bf16, load
from ..model import GIT
from ..data.batches import batch_loss, collate, mean_losses
from ..preprocessing.processor import Processor

LOSSES = ("hf", "original")
BF16 = ("auto", "on", "off")
CROP_SCALE = (0.8, 1.0)  # the original's random resized crop: 80-100% of the area, square, bicubic


@dataclass
class TrainOptions:
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # examples per micro-batch, all ranks together under torchrun
    accum: int = 1  # micro-batches per optimizer step (each micro-batch's mean loss weighs 1 / accum)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 100  # steps of linear warm-up from 0, then cosine decay to min_lr
    min_lr: float = 0.0
    clip: float = 1.0  # max global gradient norm; 0 = no clipping
    compat: str = "transformers"  # "original": the original GIT's loss (its truncation is used either way)
    loss: str | None = None  # "hf" or "original" (loss.py); None: the compat's ("hf" for transformers)
    seed: int = 0
    bf16: str = "auto"  # "auto": bfloat16 autocast where the device is fast at it; "on"; "off"
    grad_checkpointing: bool = False
    freeze_vision: bool = False
    augment: bool = True
    save_every: int = 500
    keep: int = 2  # checkpoints kept
    log_every: int = 10
    eval_every: int = 0  # steps between held-out losses (with `val`); 0 = only at the end
    progress: bool = True

    def __post_init__(self):
        check_compat(self.compat)
        if self.compat == "original" and self.loss == "hf":
            raise ValueError("compat 'original' trains with the original's loss; it cannot take loss 'hf'")
        self.loss = self.loss or ("original" if self.compat == "original" else "hf")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.bf16 not in BF16:
            raise ValueError(f"bf16 must be auto, on or off, got {self.bf16!r}")
        for name in ("steps", "batch_size", "accum", "save_every", "log_every", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TrainRun:
    """What a run starts from, learns from and writes to (`git-scratch train`'s options other than
    TrainOptions'): `prepare` builds its model, processor and data; `train` takes `out` and `resume`."""

    data: str  # "shapes" (the built-in task), or an annotation file (.jsonl, .csv, COCO .json)
    out: str  # the run directory: checkpoints, metrics.jsonl, curves.png
    resume: bool = False  # continue from out's latest checkpoint
    images: str | None = None  # image folder; None: the annotation file's folder
    init: str | None = None  # a git_scratch checkpoint to fine-tune; None: a random init of `preset`
    preset: str = "shapes-tiny"
    tokenizer: str | None = None  # tokenizer files for a random init on your own data
    task: str = "both"  # shapes: "caption", "vqa" or "both"
    shapes_samples: int = 100_000  # shapes: dataset size
    shapes_focus: str = ""  # shapes: ask the questions starting with these words more often...
    shapes_focus_share: float = 0.0  # ...in this share of the question examples (held-out data never)
    val: str | None = None  # held-out data: "shapes" (unseen seeds) or an annotation file
    val_samples: int = 256  # shapes: held-out samples
    device: str = "auto"  # "auto", "cpu", "cuda", ...: load.resolve_device


# ----------------------------------------------------------------------------- the model's training setup


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weights and embeddings, none on LayerNorms and biases; frozen
    parameters are left out."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    no_decay |= {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warm-up to 1, then cosine down to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def checkpoint_blocks(model: GIT) -> None:
    """Recompute each transformer block's activations in the backward pass instead of storing them.
    The blocks' own forward is wrapped on the instance, so parameter names and checkpoints are unchanged."""
    for block in [*model.vision.blocks, *model.blocks]:
        block.forward = _checkpointed(block.forward)


def _checkpointed(forward):
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def freeze_vision(model: GIT) -> None:
    """Train the projection and the decoder only; the vision tower keeps its weights."""
    for p in model.vision.parameters():
        p.requires_grad_(False)


# ----------------------------------------------------------------------------- batches


def random_resized_crop(im: Image.Image, size: int, g: torch.Generator) -> Image.Image:
    """The original's training augmentation, torchvision's RandomResizedCrop with aspect ratio 1: a square
    of a random CROP_SCALE fraction of the area at a random place (up to 10 tries for one that fits, then
    the centred square of the short side), resized to size x size with bicubic."""
    x, y, side = crop_box(*im.size, g)
    return im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)


def crop_box(W: int, H: int, g: torch.Generator) -> tuple[int, int, int]:
    """(x, y, side) of random_resized_crop's square in a W x H image; needs the size only, not the pixels."""
    for _ in range(10):
        scale = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * torch.rand((), generator=g).item()
        side = round(math.sqrt(scale * W * H))
        if 0 < side <= min(W, H):
            y = torch.randint(0, H - side + 1, (), generator=g).item()
            x = torch.randint(0, W - side + 1, (), generator=g).item()
            return x, y, side
    side = min(W, H)  # an image too far from square for the area asked
    return (W - side) // 2, (H - side) // 2, side


class Sampler:
    """Indices of a dataset, a fresh permutation each epoch (from seed and epoch), and a position that
    saves and restores."""

    def __init__(self, n: int, seed: int, position: int = 0):
        if n < 1:
            raise ValueError("the dataset is empty")
        self.n, self.seed, self.position = n, seed, position
        self._epoch, self._order = -1, None

    def next(self) -> int:
        epoch, i = divmod(self.position, self.n)
        if self._epoch != epoch:
            self._epoch = epoch
            self._order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        self.position += 1
        return self._order[i].item()


def next_share(data, sampler: Sampler, k: int, g: torch.Generator | None, size: int) -> list:
    """This rank's share of the next k readable examples (all k in a plain run), in sampler order:
    (image, prompt, target), the image cropped by random_resized_crop when `g` is given. Unreadable
    examples (dataset[i] is None, reported by the dataset) are passed over.

    Every rank draws the same k indices, so the sampler position (saved in checkpoints) is the same on
    every rank. Each rank reads only its slice, and the ranks swap the sizes of what they read (None:
    unreadable), so all agree on which k examples are taken, the ones one process would take, and
    rank r keeps the r-th slice of them. Every rank draws every example's crop from `g`, in order,
    cropping only its own: g stays in step on all ranks, and crops as one process's would.
    """
    rank, world = distributed.rank(), distributed.world()
    taken, read, misses = [], {}, 0  # taken: (index, (W, H)) of the readable examples, in sampler order
    while len(taken) < k:
        ids = [sampler.next() for _ in range(k - len(taken))]  # never more than still needed
        mine = ids[rank * len(ids) // world : (rank + 1) * len(ids) // world]
        read.update((i, data[i]) for i in mine)
        found = [(i, None if read[i] is None else read[i][0].size) for i in mine]
        found = [x for part in distributed.all_gather(found) for x in part]  # every rank's, in sampler order
        taken += [(i, wh) for i, wh in found if wh is not None]
        misses += sum(wh is None for _, wh in found)
        if misses > len(data):
            raise ValueError("no readable example in a whole pass over the data")
    lo, hi = rank * k // world, (rank + 1) * k // world
    out = []
    for j, (i, wh) in enumerate(taken):
        if lo <= j < hi:
            image, prompt, target = read[i] if i in read else data[i]  # read elsewhere: a miss moved the slices
            if g is not None:
                image = random_resized_crop(image.convert("RGB"), size, g)
            out.append((image, prompt, target))
        elif g is not None:
            crop_box(*wh, g)  # another rank's example: draw its crop all the same, to keep g in step
    return out


# ----------------------------------------------------------------------------- the loop


def train(model: GIT, data, processor: Processor, opts: TrainOptions, out, resume: bool = False,
          stop_at: int | None = None, val=None) -> dict:
    """Train `model` in place on `data` (dataset[i] -> (image, prompt, target) or None) for opts.steps
    optimizer steps, checkpointing into `out`. resume: continue from out's latest checkpoint, weights
    included. stop_at: stop (with a checkpoint) after this step, as if the run were cut there; the
    schedule still spans opts.steps. val: a held-out dataset whose losses are logged every
    opts.eval_every steps and at the end. Returns {"step", "loss" (the last step's), "skipped",
    "checkpoint", "val" (the last held-out losses, or None)}.

    Under torchrun every rank calls this with the same arguments (and `out` on a file system they all
    see); opts.batch_size is the global micro-batch and must divide among the ranks."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device, main, world = model.device, distributed.is_main(), distributed.world()
    if opts.batch_size % world:
        raise ValueError(f"the batch size ({opts.batch_size}) is global under torchrun: it must divide among "
                         f"the {world} ranks")
    g = torch.Generator().manual_seed(opts.seed)
    step, position = 0, 0
    start = latest_checkpoint(out)
    if start is not None and not resume:
        raise FileExistsError(f"{out} already holds a run (at {start.name}); resume it or choose another directory")
    if resume and start is None:
        print(f"no checkpoint in {out}; starting from step 0", file=sys.stderr)
    if start is not None:
        state = torch.load(start / STATE, weights_only=False)  # our own file: optimizer state, RNG tuples
        model.load_state_dict(load_file(start / "model.safetensors", device=str(device)))
        step, position = state["step"], state["position"]
    if opts.freeze_vision:
        freeze_vision(model)
    if opts.grad_checkpointing:
        checkpoint_blocks(model)
    optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, opts.warmup, opts.steps, opts.min_lr / opts.lr))
    if start is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"], g)
    sampler = Sampler(len(data), opts.seed, position)
    bf16 = opts.bf16 == "on" or (opts.bf16 == "auto" and fast_bf16(device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    model.train()
    distributed.barrier()  # every rank has read the run directory before rank 0 writes to it
    net = model
    if world > 1:  # its constructor copies rank 0's weights to every rank; backward averages gradients
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    metrics = open(out / "metrics.jsonl" if main else os.devnull, "a", encoding="utf-8")  # rank 0 alone logs
    bar = tqdm(total=opts.steps, initial=step, disable=not (opts.progress and main), desc="train",
               dynamic_ncols=True)
    loss_value, saved, t0, seen, held_out = float("nan"), start, time.perf_counter(), 0, None
    end = opts.steps if stop_at is None else min(stop_at, opts.steps)
    try:
        while step < end:
            total = 0.0
            for i in range(opts.accum):
                examples = next_share(data, sampler, opts.batch_size, g if opts.augment else None,
                                      model.config.vision.image_size)
                batch = collate(examples, processor)  # cropped already, if augmenting
                batch = {k: v.to(device) for k, v in batch.items()}
                # Each rank's loss is a mean over its own predicted tokens (both losses count need_predict
                # past [CLS]); weighed by its tokens over the mean rank's, DDP's mean over the ranks is
                # the exact token mean of the whole micro-batch. share is 1.0 in a plain run.
                tokens = batch["need_predict"][:, 1:].sum().item()
                share = tokens * world / distributed.all_sum(tokens)
                last = i == opts.accum - 1
                with net.no_sync() if world > 1 and not last else nullcontext():  # average once per step
                    with autocast:
                        loss = batch_loss(net, batch, opts.loss) * share / opts.accum
                    loss.backward()
                total += loss.item() / world
            total = distributed.all_sum(total)  # the micro-batches' token means, as one process has them
            params = [p for group in optimizer.param_groups for p in group["params"]]
            norm = nn.utils.clip_grad_norm_(params, opts.clip if opts.clip > 0 else float("inf"))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += opts.batch_size * opts.accum
            loss_value = total
            rate = seen / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}", ex_s=f"{rate:.1f}")
            if step % opts.log_every == 0 or step == end:
                metrics.write(json.dumps({"step": step, "loss": total, "lr": lr, "grad_norm": norm.item(),
                                          "examples_per_s": rate}) + "\n")
                metrics.flush()
            if val is not None and ((opts.eval_every and step % opts.eval_every == 0) or step == end):
                # every rank computes the same held-out losses: no rank idles in a collective meanwhile
                held_out = mean_losses(model, val, processor, opts.batch_size)  # no RNG drawn: resume stays exact
                model.train()
                metrics.write(json.dumps({"step": step, **{f"val_{k}": v for k, v in held_out.items()}}) + "\n")
                metrics.flush()
            if step % opts.save_every == 0 or step == end:
                if main:  # the state is the same on every rank: sampler, g and optimizer move in step
                    state = {"step": step, "position": sampler.position, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rng_states(g), "options": asdict(opts)}
                    save_checkpoint(out, model, processor, state, opts.keep)
                distributed.barrier()  # no rank goes on (or returns) before the checkpoint is whole
                saved = latest_checkpoint(out)
    finally:
        bar.close()
        metrics.close()
    skipped = len(getattr(data, "skipped", []))
    if world > 1:  # each rank met its own unreadable images; a row counts once however many ranks did
        skipped = len(set().union(*distributed.all_gather({s.where for s in getattr(data, "skipped", [])})))
    if main:
        plot_curves(out / "metrics.jsonl", out / "curves.png")
        print(f"trained to step {step}; loss {loss_value:.4f}; {skipped} examples skipped; "
              f"checkpoint {saved}", file=sys.stderr)
    return {"step": step, "loss": loss_value, "skipped": skipped, "checkpoint": saved, "val": held_out}


# ----------------------------------------------------------------------------- the run's model and data


def prepare(run: TrainRun, device: torch.device, seed: int = 0):
    """(model on `device`, processor, training data, held-out data or None) of `run`; a random init draws
    from `seed`. ValueError or OSError says what is wrong (a missing tokenizer, an unreadable data file)."""
    from ..data import shapes
    from ..data.datasets import ShapesDataset, load_dataset
    from .init_checkpoint import default_tokenizer_dir
    from ..preprocessing.processor import ImageConfig
    from ..preprocessing.tokenizer import Tokenizer

    if run.init:
        model = load(run.init, device=device)
        processor = Processor.from_pretrained(run.init)
    else:
        cfg = GitConfig.preset(run.preset)
        model = init_weights(GIT(cfg), generator=torch.Generator().manual_seed(seed)).to(device)
        if run.data == "shapes" and not run.tokenizer:
            processor = shapes.processor()
        else:
            tok_dir = run.tokenizer or default_tokenizer_dir()
            if tok_dir is None:
                raise ValueError("pass --tokenizer DIR (no default vocabulary is installed)")
            n = cfg.vision.image_size
            processor = Processor(ImageConfig(size={"shortest_edge": n}, crop_size={"height": n, "width": n}),
                                  Tokenizer.from_pretrained(tok_dir))
    if processor.tokenizer is None or processor.tokenizer.vocab_size > model.config.text.vocab_size:
        raise ValueError("the tokenizer is missing or has more tokens than the model's vocabulary")
    if run.data == "shapes":
        data = ShapesDataset(run.shapes_samples, run.task, focus=run.shapes_focus, focus_share=run.shapes_focus_share)
    else:
        data = load_dataset(run.data, run.images)
        if distributed.is_main():
            print(data.summary(), file=sys.stderr)
    val = None
    if run.val == "shapes":
        val = ShapesDataset(run.val_samples, run.task, offset=shapes.VAL_OFFSET)
    elif run.val:
        val = load_dataset(run.val, run.images)
    return model, processor, data, val
