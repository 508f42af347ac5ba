"""Training: teacher-forced next-token loss over image-text pairs, resumable exactly.

    examples (image, prompt, target) ─▶ random resized crop ─▶ Processor ─▶ (pixels, ids, need_predict)
        ─▶ GIT ─▶ hf_loss or original_loss (loss.py) ─▶ AdamW (decay 0.01, none on norms and biases)
        ─▶ clip ─▶ warm-up + cosine ─▶ every `save_every` steps an atomic checkpoint (checkpoints.py)

Both losses read rows cut as the original's get_data cuts them (truncation.example_ids: a question + answer over
40 wordpieces keeps its last 38); compat="original" picks the original's loss.

`resume` restores every piece of state (weights, optimizer, scheduler, step, RNG states, data position),
so N + M steps in two runs give bit-identical parameters to N + M in one. The examples come from feed.py:
a fresh permutation per epoch, drawn from `seed` and the epoch number, and each example's crop from a
generator of its own position, so that `workers` processes reading ahead change nothing but the speed. A resume starts from the newest complete checkpoint that
loads, and refuses settings that would make it another run (rundir.check_resume says which); the
lr schedule, --steps and the like are applied from the resumed step on (reschedule).

A loss, gradient norm or weight that stops being finite ends the run (Diverged) before that step is
applied or saved, so every checkpoint on disk is finite. Progress goes to a tqdm bar (loss, lr,
examples/s) and to metrics.jsonl, strict JSON (null, never NaN); curves.png plots the losses at the end. A TrainRun names the rest of a run (the model to start
from, the data, the run directory) and `prepare` builds it; cli/train.py reads both from the command line.

Under torchrun (distributed.py) the same loop runs on every rank inside DistributedDataParallel:
`batch_size` is the global micro-batch, every rank steps through the same positions and takes its own
slice (Feed.next_share), each rank's loss is weighed so that the averaged gradient is the exact token mean of the
whole micro-batch, and rank 0 alone writes checkpoints, metrics.jsonl, curves.png and the progress bar.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from . import distributed
from .checkpoints import RunError, rng_states, save_checkpoint, set_rng_states
from .feed import Feed
from .rundir import RunDir, check_resume, describe_run, flag
from ..config import GitConfig
from ..constants import check_compat
from .curves import plot_curves
from ..init import init_weights
from ..load import load
from ..precision import fast_bf16
from ..model import GIT
from ..data.batches import batch_loss, check_tokenizer, mean_losses, stack
from ..generation.cache_check import cache_mismatch
from ..preprocessing.processor import Processor

LOSSES = ("hf", "original")
CACHE_CHECK_IMAGES = 4  # of the last batch, at each save: a few greedy captions, cached and not
BF16 = ("auto", "on", "off")


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
    workers: int = 0  # processes reading examples ahead (feed.py); 0: read in the loop's process. Same results.
    cache_check: bool = True  # at each save: cached decoding of a few batch images must equal the uncached
    progress: bool = True

    def __post_init__(self):
        """ValueError naming the flag (the field's name as `git-scratch train` spells it) of a bad value."""
        check_compat(self.compat)
        if self.compat == "original" and self.loss == "hf":
            raise ValueError("compat 'original' trains with the original's loss; it cannot take loss 'hf'")
        self.loss = self.loss or ("original" if self.compat == "original" else "hf")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.bf16 not in BF16:
            raise ValueError(f"bf16 must be auto, on or off, got {self.bf16!r}")
        for name in ("steps", "batch_size", "accum", "save_every", "log_every", "keep"):
            _check(self, name, lambda v: v >= 1, "must be >= 1")
        _check(self, "eval_every", lambda v: v >= 0, "must be >= 0 (0: only at the end)")
        _check(self, "workers", lambda v: v >= 0, "must be >= 0 (0: read in the training process)")
        _check(self, "warmup", lambda v: v >= 0, "must be >= 0")
        _check(self, "seed", lambda v: 0 <= v < 2**32, "must be between 0 and 2**32 - 1")
        _check(self, "lr", lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
        _check(self, "min_lr", lambda v: math.isfinite(v) and 0 <= v <= self.lr,
               f"must be between 0 and --lr ({self.lr})")
        _check(self, "weight_decay", lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0")
        _check(self, "clip", lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0 (0: no clipping)")


def _check(options, name: str, ok, must: str) -> None:
    value = getattr(options, name)
    if not ok(value):
        raise ValueError(f"{flag(name)} {must}, got {value}")


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
    config: str | None = None  # a model config JSON (configs/*.json's form) instead of `preset`
    overrides: list[str] = field(default_factory=list)  # "FIELD=VALUE" on the config (GitConfig.with_overrides)
    tokenizer: str | None = None  # tokenizer files for a random init on your own data
    task: str = "both"  # shapes: "caption", "vqa" or "both"
    shapes_samples: int = 100_000  # shapes: dataset size
    shapes_focus: str = ""  # shapes: ask the questions starting with these words more often...
    shapes_focus_share: float = 0.0  # ...in this share of the question examples (held-out data never)
    val: str | None = None  # held-out data: "shapes" (unseen seeds) or an annotation file
    val_samples: int = 256  # shapes: held-out samples
    device: str = "auto"  # "auto", "cpu", "cuda", ...: precision.resolve_device

    def __post_init__(self):
        if str(self.out) == "":
            raise ValueError("--out is empty: name a run directory")
        if self.init and (self.config or self.overrides):
            raise ValueError("--config and --set shape a new model; --init fine-tunes a checkpoint as it is")
        _check(self, "shapes_samples", lambda v: v >= 1, "must be >= 1")
        _check(self, "val_samples", lambda v: v >= 1, "must be >= 1")
        _check(self, "shapes_focus_share", lambda v: 0 <= v <= 1, "must be between 0 and 1")


def run_record(run: TrainRun) -> dict:
    """What a checkpoint keeps of its TrainRun (state "run"), for rundir.check_resume: paths resolved,
    so that another spelling of the same file is the same run; None where the run does not use it."""
    def where(path):
        return os.path.realpath(path) if path else None

    shapes = run.data == "shapes"
    return {"data": "shapes" if shapes else where(run.data), "images": None if shapes else where(run.images),
            "init": where(run.init), "preset": None if run.init or run.config else run.preset,
            "config": where(run.config), "overrides": None if run.init else list(run.overrides),
            "tokenizer": None if run.init else where(run.tokenizer),
            "task": run.task if shapes or run.val == "shapes" else None,
            "shapes_samples": run.shapes_samples if shapes else None,
            "shapes_focus": run.shapes_focus if shapes else None,
            "shapes_focus_share": run.shapes_focus_share if shapes else None,
            "val": run.val if run.val in (None, "shapes") else where(run.val),
            "val_samples": run.val_samples if run.val == "shapes" else None, "device": run.device}


# ----------------------------------------------------------------------------- the model's training setup


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (weights, embeddings), none on vectors and scalars; frozen
    parameters are left out. By shape, not by module class, so a parameter of a kind this file does not know
    (an RMSNorm's weight, a learned gate) is decided as its like: norm gains, biases and gates are never decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
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


# ----------------------------------------------------------------------------- the loop


class Diverged(Exception):
    """A loss, gradient norm or weight that is not finite: training stopped before that step was applied
    or saved, and the checkpoints on disk are those of finite steps."""


def train(model: GIT, data, processor: Processor, opts: TrainOptions, out, resume: bool = False,
          stop_at: int | None = None, val=None, record: dict | None = None) -> dict:
    """Train `model` in place on `data` (dataset[i] -> (image, prompt, target) or None) for opts.steps
    optimizer steps, checkpointing into `out`. resume: continue from out's newest complete checkpoint,
    weights included (rundir.RunDir says which, and check_resume which settings may change).
    stop_at: stop (with a checkpoint) after this step, as if the run were cut there; the schedule still
    spans opts.steps. val: a held-out dataset whose losses are logged every opts.eval_every steps and at
    the end. record: the run's own settings (run_record), kept in each checkpoint for a later resume.
    Returns {"step", "loss" (the last step's), "skipped", "checkpoint", "val" (the last held-out losses,
    or None)}.

    `out` is a run directory's path, or a rundir.RunDir the caller opened (and whose resume it
    checked), as the command line does to refuse a bad one before any compute; then `resume` is the
    RunDir's. Errors: checkpoints.RunError (the run directory, a full disk), Diverged (a non-finite loss,
    gradient norm or weight), ValueError (data with no readable example, weights that do not fit).

    Under torchrun every rank calls this with the same arguments (and `out` on a file system they all
    see); opts.batch_size is the global micro-batch and must divide among the ranks."""
    if isinstance(out, RunDir):
        return _train(model, data, processor, opts, out, stop_at, val, record)
    run = RunDir(out, resume)
    try:
        if run.start is not None:
            note = check_resume(run.start, run.state, {**asdict(opts), **(record or {})})
            if note and distributed.is_main():
                print(note, file=sys.stderr)
        return _train(model, data, processor, opts, run, stop_at, val, record)
    finally:
        run.close()


def reschedule(optimizer, scheduler, opts: TrainOptions, old: dict) -> None:
    """Apply a resumed run's new lr, min_lr, warm-up, steps and weight decay from the restored step on: the
    restored optimizer and scheduler hold the old run's."""
    if all(old.get(k) == getattr(opts, k) for k in ("lr", "min_lr", "warmup", "steps", "weight_decay")):
        return  # nothing to change: the restored state stands as saved, and resume stays bit for bit
    optimizer.param_groups[0]["weight_decay"] = opts.weight_decay  # param_groups: the first group decays
    factor = lr_factor(scheduler.last_epoch, opts.warmup, opts.steps, opts.min_lr / opts.lr)
    scheduler.base_lrs = [opts.lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = opts.lr, opts.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _json(row: dict) -> str:
    """One line of strict JSON: a number that is not finite is null (NaN and Infinity are not JSON)."""
    return json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()},
                      allow_nan=False)


def _train(model: GIT, data, processor: Processor, opts: TrainOptions, run: RunDir, stop_at, val, record) -> dict:
    out, start, state = run.path, run.start, run.state
    device, main, world = model.device, distributed.is_main(), distributed.world()
    if opts.batch_size % world:
        raise ValueError(f"the batch size ({opts.batch_size}) is global under torchrun: it must divide among "
                         f"the {world} ranks")
    if val is not None and len(val) == 0:  # every row refused: known now, not after the training
        raise ValueError(f"held-out data (--val): {getattr(val, 'source', '') or 'it'} has no usable example")
    step, position = 0, 0
    if start is not None:
        try:
            model.load_state_dict(run.weights)
        except RuntimeError as e:
            raise ValueError(f"{start}: its weights do not fit this model (another --preset or --init?): "
                             f"{_one_line(e)}") from None
        run.weights = None  # loaded: the memory is the model's again
        step, position = state["step"], state["position"]
    if opts.freeze_vision:
        freeze_vision(model)
    if opts.grad_checkpointing:
        checkpoint_blocks(model)
    optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, opts.warmup, opts.steps, opts.min_lr / opts.lr))
    if start is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:  # another set of trainable parameters
            raise ValueError(f"{start}: its optimizer state does not fit this model's trainable parameters "
                             f"({_one_line(e)})") from None
        scheduler.load_state_dict(state["scheduler"])
        reschedule(optimizer, scheduler, opts, state.get("options", {}))
        set_rng_states(state["rng"])
    feed = Feed(data, processor, opts.seed, opts.augment, model.config.vision.image_size, opts.batch_size,
                position, opts.workers)
    pin = device.type == "cuda"  # page-locked batches copy to the GPU while it works
    bf16 = opts.bf16 == "on" or (opts.bf16 == "auto" and fast_bf16(device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    model.train()
    distributed.barrier()  # every rank has read the run directory before rank 0 writes to it
    net = model
    if world > 1:  # its constructor copies rank 0's weights to every rank; backward averages gradients
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    try:
        metrics = open(out / "metrics.jsonl" if main else os.devnull, "a", encoding="utf-8")  # rank 0 alone logs
    except OSError as e:
        raise RunError(f"cannot write {out / 'metrics.jsonl'}: {e.strerror or e}") from None
    unlogged = None  # under torchrun, rank 0's failed metrics write, told to every rank at the next save
    if main:  # a readable account of the run beside its metrics (rewritten by a resume)
        try:
            (out / "run.json").write_text(json.dumps(describe_run(asdict(opts), record, model.config.to_dict(),
                                                                  device), indent=1) + "\n")
        except OSError as e:
            raise RunError(f"cannot write {out / 'run.json'}: {e.strerror or e}") from None

    def log(row: dict) -> None:
        nonlocal unlogged
        try:
            metrics.write(_json(row) + "\n")
            metrics.flush()
        except OSError as e:
            unlogged = (f"no space left on device writing {out / 'metrics.jsonl'}" if e.errno == errno.ENOSPC
                        else f"cannot write {out / 'metrics.jsonl'}: {e.strerror or e}")
            if world == 1:
                raise RunError(unlogged) from None

    def kept() -> str:
        return (f"the last checkpoint, {saved}, is kept" if saved is not None
                else "no checkpoint had been saved yet")

    bar = tqdm(total=opts.steps, initial=step, disable=not (opts.progress and main), desc="train",
               dynamic_ncols=True)
    loss_value, saved, t0, seen, held_out = float("nan"), start, time.perf_counter(), 0, None
    end = opts.steps if stop_at is None else min(stop_at, opts.steps)
    try:
        while step < end:
            total = 0.0
            for i in range(opts.accum):
                batch = stack(feed.next_share(), processor.tokenizer.pad_id)  # cropped already, if augmenting
                # Each rank's loss is a mean over its own predicted tokens (both losses count need_predict
                # past [CLS]); weighed by its tokens over the mean rank's, DDP's mean over the ranks is
                # the exact token mean of the whole micro-batch. share is 1.0 in a plain run. (Counted on
                # the host copy: no wait for the device.)
                tokens = batch["need_predict"][:, 1:].sum().item()
                batch = {k: (v.pin_memory() if pin else v).to(device, non_blocking=pin) for k, v in batch.items()}
                share = tokens * world / distributed.all_sum(tokens)
                last = i == opts.accum - 1
                with net.no_sync() if world > 1 and not last else nullcontext():  # average once per step
                    with autocast:
                        loss = batch_loss(net, batch, opts.loss) * share / opts.accum
                    loss.backward()
                total += loss.item() / world
            total = distributed.all_sum(total)  # the micro-batches' token means, as one process has them
            params = [p for group in optimizer.param_groups for p in group["params"]]
            norm = nn.utils.clip_grad_norm_(params, opts.clip if opts.clip > 0 else float("inf")).item()
            lr = optimizer.param_groups[0]["lr"]
            # the same on every rank (all_sum, DDP's averaged gradients): every rank stops here together
            if not (math.isfinite(total) and math.isfinite(norm)):
                log({"step": step + 1, "loss": total, "lr": lr, "grad_norm": norm})
                raise Diverged(f"training diverged at step {step + 1}: loss {total}, gradient norm {norm} (lr "
                               f"{lr:.3g}); the step was not applied and {kept()}; resume it with a lower --lr")
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
                log({"step": step, "loss": total, "lr": lr, "grad_norm": norm, "examples_per_s": rate})
            if step % opts.save_every == 0 or step == end:
                if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
                    raise Diverged(f"training diverged at step {step}: a weight is no longer finite; "
                                   f"the step was not saved and {kept()}; resume it with a lower --lr")
                error = unlogged
                if main and not error:  # the state is the same on every rank: the feed and optimizer move in step
                    state = {"step": step, "position": feed.position, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rng_states(), "options": asdict(opts),
                             "run": record}
                    try:
                        save_checkpoint(out, model, processor, state, opts.keep)
                    except RunError as e:
                        error = str(e)
                error = distributed.broadcast(error)  # no rank goes on (or returns) before the checkpoint is whole
                if error:
                    raise RunError(f"{error}; {kept()}")
                saved = out / f"step-{step:06d}"
                if opts.cache_check and (why := cache_mismatch(model, batch["pixel_values"][:CACHE_CHECK_IMAGES])):
                    raise RunError(f"checkpoint {saved}: {why}; --no-cache-check skips this check")
            # after the save: held-out data that fails loses no training
            if val is not None and ((opts.eval_every and step % opts.eval_every == 0) or step == end):
                # every rank computes the same held-out losses: no rank idles in a collective meanwhile
                try:
                    held_out = mean_losses(model, val, processor, opts.batch_size)  # no RNG drawn: resume stays exact
                except ValueError as e:  # no readable example
                    raise ValueError(f"held-out data (--val): {e}; {kept()}") from None
                model.train()
                log({"step": step, **{f"val_{k}": v for k, v in held_out.items()}})
    finally:
        feed.close()
        bar.close()
        metrics.close()
    skipped = len(getattr(data, "skipped", []))
    if world > 1:  # each rank met its own unreadable images; a row counts once however many ranks did
        skipped = len(set().union(*distributed.all_gather({s.where for s in getattr(data, "skipped", [])})))
    if main:
        try:
            plot_curves(out / "metrics.jsonl", out / "curves.png")
        except OSError as e:  # the run itself is saved: a missing plot is worth a word, not a failure
            print(f"warning: cannot write {out / 'curves.png'}: {e.strerror or e}", file=sys.stderr)
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
        cfg = (GitConfig.from_json(run.config) if run.config else GitConfig.preset(run.preset))
        cfg = cfg.with_overrides(run.overrides)
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
    check_tokenizer(processor, model.config.text.vocab_size, run.init or run.tokenizer or "the tokenizer")
    speaks = distributed.is_main()  # the load-time skip lines once, not once per rank
    if run.data == "shapes":
        data = ShapesDataset(run.shapes_samples, run.task, focus=run.shapes_focus, focus_share=run.shapes_focus_share)
    else:  # images checked as caption checks them (an extreme aspect ratio is skipped, not resized)
        data = load_dataset(run.data, run.images, processor=processor, report=speaks)
        if speaks:
            print(data.summary(), file=sys.stderr)
    val = None
    if run.val == "shapes":
        val = ShapesDataset(run.val_samples, run.task, offset=shapes.VAL_OFFSET)
    elif run.val:
        val = load_dataset(run.val, run.images, processor=processor, report=speaks)
    return model, processor, data, val
