"""The training loop's examples: which ones a step takes, their crops, and worker processes that read ahead.

    stream position p (0, 1, 2, ...; saved in checkpoints)
        ─▶ dataset index: a fresh permutation of the data each epoch, from the seed and the epoch
        ─▶ (image, prompt, target), or a skip ─▶ random resized crop, drawn from a generator seeded by (seed, p)
        ─▶ batches.example_arrays: (pixels, ids, need_predict) ─▶ Feed.next_share ─▶ batches.stack

An example depends on its position alone, never on what was read before it, so reading ahead in worker
processes (`workers` > 0: torch's DataLoader, in order) gives the same batches, losses and resume as
reading in the loop's own process (`workers` = 0), and so does any number of torchrun ranks.

Under torchrun every rank steps through the same positions. Each reads only its slice of a round of
positions, the ranks swap which of those were readable, and all agree on the k examples one process would
take; rank r keeps the r-th slice of them (reading, in its own process, any that a skip moved into its
slice). The workers read each rank's slices as they would fall with no skip; after a skip a round or two
is read in the loop's process while they catch up.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import deque

import torch
from PIL import Image
from torch.utils.data import DataLoader

from . import distributed
from ..data.batches import example_arrays

CROP_SCALE = (0.8, 1.0)  # the original's random resized crop: 80-100% of the area, square, bicubic


# ----------------------------------------------------------------------------- crops


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


def crop_generator(seed: int, position: int) -> torch.Generator:
    """The generator of the crop at stream `position`: its own, so that no crop depends on another."""
    return torch.Generator().manual_seed(seed * 2**32 + position)  # seed < 2**32 (TrainOptions checks)


# ----------------------------------------------------------------------------- positions -> examples


class Order:
    """Stream position -> dataset index: a fresh permutation of n each epoch, drawn from seed and epoch."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("the dataset is empty")
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def __call__(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if self._epoch != epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        return self._perm[i].item()


class Examples(torch.utils.data.Dataset):
    """examples[p] -> (p, example_arrays of the example at stream position p or None, why it was skipped
    or None). Reads, crops and preprocesses; records nothing (the loop's process notes the skips)."""

    def __init__(self, data, processor, seed: int, augment: bool, size: int):
        self.data, self.processor, self.seed, self.augment, self.size = data, processor, seed, augment, size
        self.order = Order(len(data), seed)

    def __len__(self) -> int:
        return len(self.data)  # unused: the positions come from Ahead, past any epoch

    def __getitem__(self, p: int):
        read = getattr(self.data, "read", None)
        item, why = read(self.order(p)) if read else (self.data[self.order(p)], None)
        if item is None:
            return p, None, why
        image, prompt, target = item
        if self.augment:
            image = random_resized_crop(image.convert("RGB"), self.size, crop_generator(self.seed, p))
        return p, example_arrays(image, prompt, target, self.processor), None


def predicted(start: int, k: int, rank: int, world: int):
    """The positions this rank reads from `start` on when no example is skipped: its slice of each round
    of k (every position, in order, in a plain run)."""
    lo, hi = rank * k // world, (rank + 1) * k // world
    for s in itertools.count(start, k):
        yield from range(s + lo, s + hi)


class Ahead(torch.utils.data.Sampler):
    """The DataLoader's positions: predicted() from `start`, which Feed moves when a skip shifts them."""

    def __init__(self, k: int, rank: int, world: int):
        self.start, self.k, self.rank, self.world = 0, k, rank, world

    def __iter__(self):
        return predicted(self.start, self.k, self.rank, self.world)


def default_workers(device: str) -> int:
    """Worker processes for training on `device` (a --device name): on a GPU one a core, one core left for
    the loop, at most 8; on the CPU none, as the step itself uses every core (2-core AMD EPYC, shapes-tiny,
    batch 32: 133 examples/s with no worker, 125-130 with one)."""
    gpu = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not gpu:  # the CPU (or Apple's GPU, sharing the CPU's cores)
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores - 1))


class Feed:
    """This rank's share of each micro-batch of k readable examples, from stream `position` on (saved in
    checkpoints as "position"), read in this process or by `workers` processes ahead of the loop."""

    def __init__(self, data, processor, seed: int, augment: bool, size: int, k: int, position: int = 0,
                 workers: int = 0):
        self.data, self.k, self.position = data, k, position
        self.examples = Examples(data, processor, seed, augment, size)
        self.rank, self.world = distributed.rank(), distributed.world()
        self.loader = self.it = None
        if workers > 0:
            self.ahead = Ahead(k, self.rank, self.world)  # k divides among the ranks (the loop checks)
            self.loader = DataLoader(self.examples, sampler=self.ahead, batch_size=None, num_workers=workers,
                                     persistent_workers=True, prefetch_factor=4, collate_fn=_as_is)
            self._restart(position)

    def next_share(self) -> list:
        """This rank's example_arrays of the next k readable examples (all k in a plain run), in stream
        order; ValueError when a whole pass over the data finds none readable."""
        rank, world, k = self.rank, self.world, self.k
        taken, read, misses = [], {}, 0  # taken: the positions of readable examples, in order
        while len(taken) < k:
            start, n = self.position, k - len(taken)  # never more than still needed
            self.position += n
            mine = list(range(start + rank * n // world, start + (rank + 1) * n // world))
            read.update(self._read(mine))
            found = [(p, read[p] is not None) for p in mine]
            found = [x for part in distributed.all_gather(found) for x in part]  # every rank's, in order
            taken += [p for p, ok in found if ok]
            misses += sum(not ok for _, ok in found)
            if misses > len(self.data):
                raise ValueError("no readable example in a whole pass over the data")
        lo, hi = rank * k // world, (rank + 1) * k // world
        # a skip moves the slices: an example read by another rank is read here again
        return [read[p] if p in read else self._here([p])[p] for p in taken[lo:hi]]

    def _read(self, positions: list[int]) -> dict:
        """{p: example_arrays or None} for these positions, from the workers when they read them ahead."""
        if self.loader is None or not positions:
            return self._here(positions)
        if self._peek(len(positions)) != positions:
            self._restart(self.position)  # a skip moved this rank's slices: read ahead from the next round
            return self._here(positions)
        got = [next(self.it) for _ in positions]
        for _ in positions:
            self.pending.popleft()
        return self._noted(got)

    def _here(self, positions: list[int]) -> dict:
        """_read's result, read in this process."""
        return self._noted([self.examples[p] for p in positions])

    def _noted(self, got: list) -> dict:
        out = {}
        for p, arrays, why in got:
            if why is not None:
                self.data.note(why)
            out[p] = arrays
        return out

    def close(self) -> None:
        """Stop the worker processes."""
        self.it = self.loader = None

    def _restart(self, start: int) -> None:
        self.ahead.start = start
        self.it = iter(self.loader)
        self.shadow = predicted(start, self.ahead.k, self.rank, self.world)  # what the workers will yield
        self.pending = deque()

    def _peek(self, n: int) -> list[int]:
        while len(self.pending) < n:
            self.pending.append(next(self.shadow))
        return list(itertools.islice(self.pending, n))


def _as_is(x):
    return x
