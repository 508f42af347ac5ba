"""The dynamic batcher: requests that arrive close together are decoded together, each image encoded once.

    request ─▶ Job (images, rows, options) ─▶ queue ─▶ worker thread: gather ─▶ run_jobs ─▶ each Job's future
                                             (full: 503)         (≤ max_wait, ≤ max_batch rows)

A row is one (image, prompt) pair: one caption, or one question about an image. The worker takes the first waiting
job, then whatever else arrives within `max_wait` seconds, up to `max_batch` rows (a job that does not fit waits for
the next batch; a job larger than `max_batch` runs alone, in slices). Given `arrivals` (the server's count of
requests still being received), it waits only while one is, or was within QUIET_S: a lone request starts 10 ms
after it is queued, and a burst whose requests come a few ms apart is not split. `run_jobs` encodes every image of
the batch once (GIT's trick: one image's keys/values serve every question and beam about it), then generates the
rows grouped by their decoding options, so rows with different options never share a `generate` call; an image's
questions go into one call, which runs the image through the decoder once for all of them (`calls`).

A row's result never depends on its batch: `generate` gives each row of a mixed-length batch the ids it gives the
row alone (tests/test_generate.py), and no option is shared between rows that differ in it. Only the float32
rounding of a batched matrix product may differ from a single row's in the last bits of a score; the ids are
those the command line prints (tests/test_serve.py compares them id for id). --dtype bfloat16-vision keeps this
(its bfloat16 vision encoder takes one image a call: fast.OneImageACall); whole-model bfloat16 does not: oneDNN's
bfloat16 products round differently with the number of rows, a step of bfloat16 apart, which can change ids
(README, "Batching: how and when").
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..evaluation.records import results
from ..generation.generate import generate


@dataclass(frozen=True)
class Decoding:
    """What a request may choose about decoding; rows whose Decoding differs never share a generate call."""

    max_new_tokens: int = 20
    num_beams: int = 1


@dataclass
class Row:
    image: int  # index into its job's images
    prompt: list[int]  # [CLS], or [CLS] + the question's tokens
    question: str | None


@dataclass
class Job:
    """One request's work: rows over its images, one Decoding; or `alone`, work that runs by itself (explain).
    The future gets a list of results, one per row in order (a result is a record, or {"error": ...}), or
    alone()'s value."""

    images: list = field(default_factory=list)  # (3, H, W) float32 pixels each
    rows: list[Row] = field(default_factory=list)
    decoding: Decoding = Decoding()
    keys: list[str] = field(default_factory=list)  # each image's "sha256:" of its bytes (for the ImageCache), or []
    alone: Callable[[], object] | None = None
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return max(len(self.rows), 1)


class QueueFull(Exception):
    """Every place in the queue is taken: the server answers 503 with Retry-After."""


class Closed(Exception):
    """The server is shutting down: no new work is taken."""


STOP = object()  # what close() queues: the worker finishes what came before it, then ends
POLL_S = 0.002  # while a batch waits for requests on their way, how often it looks whether any still is
QUIET_S = 0.01  # a batch starts once no request has been on its way for this long (or max_wait is up)


class Arrivals:
    """How many requests are on their way to the batcher: being received and read, their job not yet submitted.
    Changed on the server's event loop alone (`expect` as a request comes in, `arrived` once its job is queued or
    it has failed); the worker reads `n`."""

    def __init__(self):
        self.n = 0

    def expect(self) -> None:
        self.n += 1

    def arrived(self) -> None:
        self.n -= 1


class Batcher:
    """A bounded queue and the one worker thread that runs the model. `run(jobs)` -> one result per job."""

    def __init__(self, run: Callable[[list[Job]], list], max_batch: int = 8, max_wait: float = 0.01,
                 queue_size: int = 64, arrivals: Arrivals | None = None):
        self.run, self.max_batch, self.max_wait, self.arrivals = run, max_batch, max_wait, arrivals
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.held = None  # a job gathered that did not fit the last batch: the next batch starts with it
        self.running = 0  # rows in the batch being run (GET /health)
        self.batches = 0  # batches run so far
        self.closed = False
        self.thread = threading.Thread(target=self._work, name="git-scratch-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> Future:
        """Queue `job`; its future answers. QueueFull when the queue is full, Closed once closing."""
        if self.closed:
            raise Closed
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def close(self) -> None:
        """Take no new work, finish every job already queued, then stop the worker."""
        self.closed = True
        if self.thread.is_alive():
            self.queue.put(STOP)  # blocks only while the queue is full, which the worker is emptying
            self.thread.join()

    def gather(self):
        """The next batch: the first job waiting, then those arriving within max_wait, up to max_batch rows; with
        `arrivals`, only while some request is on its way or was within QUIET_S. None once STOP comes first."""
        first = self.held if self.held is not None else self.queue.get()
        self.held = None
        if first is STOP:
            return None
        jobs, rows = [first], first.size
        now = time.monotonic()
        deadline, last_seen = now + self.max_wait, now
        while rows < self.max_batch and first.alone is None:
            now = time.monotonic()
            left = deadline - now
            if self.arrivals is None or self.arrivals.n > 0 or not self.queue.empty():
                last_seen = now
            if left <= 0 or now - last_seen > QUIET_S:
                break  # the wait is over, or nothing else has been on its way for QUIET_S
            try:
                job = self.queue.get(timeout=left if self.arrivals is None else min(left, POLL_S))
            except queue.Empty:
                continue
            if job is STOP or job.alone is not None or rows + job.size > self.max_batch:
                self.held = job
                break
            jobs.append(job)
            rows += job.size
        return jobs

    def _work(self) -> None:
        while (jobs := self.gather()) is not None:
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # drop those whose client left
            if not jobs:
                continue
            self.running = sum(j.size for j in jobs)
            try:
                out = [jobs[0].alone()] if jobs[0].alone is not None else self.run(jobs)
            except Exception as e:  # noqa: BLE001 -- the worker outlives any one batch; its clients get a 500
                for j in jobs:
                    j.future.set_exception(e)
            else:
                for j, result in zip(jobs, out):
                    j.future.set_result(result)
            self.running, self.batches = 0, self.batches + 1


class ImageCache:
    """The vision encoder's output (N, D) for the last `size` images seen, by the sha256 of their bytes: the page
    asks for a caption, then questions about the same photo, each an upload of the same bytes. Used by the worker
    thread alone. An image's features come from the batch it was first encoded in, as they would without the
    cache for that request: a later request may differ from a fresh encoding in the last bits of a score."""

    def __init__(self, size: int):
        self.size, self.store, self.hits, self.misses = size, OrderedDict(), 0, 0

    def get(self, key: str) -> torch.Tensor | None:
        f = self.store.get(key)
        if f is not None:
            self.store.move_to_end(key)
        self.hits, self.misses = self.hits + (f is not None), self.misses + (f is None)
        return f

    def put(self, key: str, feats: torch.Tensor) -> None:
        self.store[key] = feats
        self.store.move_to_end(key)
        while len(self.store) > self.size:
            self.store.popitem(last=False)


# ---------------------------------------------------------------- one batch through the model
def run_jobs(model, tokenizer, jobs: list[Job], max_batch: int, cache: ImageCache | None = None) -> list[list[dict]]:
    """Each job's results, row by row: every image of the batch encoded once (not at all when `cache` has it),
    then the rows generated in groups of one Decoding (and one image size), at most max_batch rows per generate
    call, in arrival order."""
    images = [px for job in jobs for px in job.images]
    keys = [key for job in jobs for key in (job.keys or [None] * len(job.images))]
    first = [sum(len(j.images) for j in jobs[:k]) for k in range(len(jobs))]  # each job's first image
    with torch.inference_mode():
        feats = encode(model, images, keys, max_batch, cache)  # one (N, D) per image
        groups: dict[tuple, list] = {}
        for k, job in enumerate(jobs):
            for r, row in enumerate(job.rows):
                i = first[k] + row.image
                groups.setdefault((job.decoding, feats[i].shape), []).append((k, r, i, row))
        out = [[None] * len(job.rows) for job in jobs]
        for (decoding, _), rows in groups.items():
            for part in calls(rows, max_batch):
                for (k, r, _, _), rec in zip(part, generate_rows(model, tokenizer, feats, part, decoding)):
                    out[k][r] = rec
    return out


def calls(rows: list, max_batch: int) -> list[list]:
    """A group's rows [(job, row, image, Row)] cut into generate calls of at most max_batch rows, image-major,
    each image's rows together: generate runs each image through the decoder once for all its rows (its
    questions share its keys/values). Whole images fill a call in arrival order; an image with more rows than
    max_batch is sliced, one image a call."""
    by_image: dict[int, list] = {}
    for row in rows:
        by_image.setdefault(row[2], []).append(row)
    out, call = [], []
    for image_rows in by_image.values():
        if len(image_rows) > max_batch:
            out += [image_rows[s : s + max_batch] for s in range(0, len(image_rows), max_batch)]
            continue
        if len(call) + len(image_rows) > max_batch:
            out.append(call)
            call = []
        call += image_rows
    return out + [call] * bool(call)


def encode(model, images: list[torch.Tensor], keys: list[str | None], max_batch: int,
           cache: ImageCache | None = None) -> list[torch.Tensor]:
    """model.encode_image over `images`, max_batch at a time, same-sized images together: one (N, D) each.
    An image whose key (`keys`, None: no key) is in `cache` or earlier in `images` is not encoded again."""
    feats: list = [None] * len(images)
    same: dict[str, int] = {}  # key -> the first image with it, which is encoded
    by_shape: dict[tuple, list[int]] = {}
    for i, (px, key) in enumerate(zip(images, keys)):
        if key is not None and cache is not None and (f := cache.get(key)) is not None:
            feats[i] = f
        elif key is None or same.setdefault(key, i) == i:
            by_shape.setdefault(tuple(px.shape), []).append(i)
    for idx in by_shape.values():
        for start in range(0, len(idx), max_batch):
            part = idx[start : start + max_batch]
            pixels = torch.stack([images[i] for i in part]).to(model.device, model.dtype)  # (B, 3, H, W)
            for i, f in zip(part, model.encode_image(pixels)):  # (B, N, D)
                feats[i] = f
                if keys[i] is not None and cache is not None:
                    cache.put(keys[i], f.clone())  # its own memory, not a view holding the whole batch
    return [feats[same[key]] if feats[i] is None else feats[i] for i, key in enumerate(keys)]


def generate_rows(model, tokenizer, feats, rows, decoding: Decoding) -> list[dict]:
    """One generate call over `rows` [(job, row, image, Row)], image-major (calls); if it fails, each row alone,
    so that a row that cannot run fails by itself with its reason."""
    per_image = Counter(i for _, _, i, _ in rows)  # each image once, in the rows' order: its number of rows
    try:
        out = generate(model, image=torch.stack([feats[i] for i in per_image]),  # (Bi, N, D)
                       input_ids=[row.prompt for *_, row in rows], prompts_per_image=list(per_image.values()),
                       return_scores=True, max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams)
        return results(tokenizer, out, [len(row.prompt) for *_, row in rows], [row.question for *_, row in rows])
    except Exception as e:  # noqa: BLE001 -- out of memory, say: this call only
        if len(rows) > 1:
            return [rec for row in rows for rec in generate_rows(model, tokenizer, feats, [row], decoding)]
        return [{"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}]
