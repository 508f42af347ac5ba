"""Running the command line's inputs in batches: expand paths, skip what --output already holds,
load, encode each image once, generate every prompt from it, and write one flushed record per result.

Each batch is loaded (a bad file becomes an error record, never an exception), encoded ONCE, and every
prompt (the caption prompt, or each question) is generated from those image tokens; a question the model
cannot take fails alone. Records are appended and flushed one line at a time, so `--output` is also the
resume log (results.py: which file it may be, what a result is keyed by, the lock).

With --sample --seed S every (input, question) draws from its own generator seeded with S, and seeded inputs
run one at a time, so a sample depends on S and that input only: not on the batch, its neighbours or the rank.
Text output keeps one result per line: a name that would break the line is shown escaped (`processor.printable`).
"""

from __future__ import annotations

import sys

from ..constants import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ..evaluation.records import ask, prompt
from .options import RunOptions, checkpoint_path
from .items import Item, Sink, Streamer, expand, reason
from .results import OutputError, ResultsFile, differences, run_settings


# ---------------------------------------------------------------- inputs
class Runner:
    """One loaded model + processor; runs batches of inputs through encode-once, generate-per-prompt."""

    def __init__(self, opts: RunOptions, model, processor, sink: Sink):
        self.opts, self.model, self.processor, self.sink = opts, model, processor, sink
        self.max_pixels = processor.max_pixels  # the decompression-bomb budget, for video frames too

    def load(self, item: Item):
        """(3, H, W) pixels of an image, (F, 3, H, W) of a video; raises with the reason on bad input."""
        if self.opts.video:
            from ..preprocessing.video import sample_frames

            frames = sample_frames(item.path, self.model.config.n_frames, self.max_pixels)
            return self.processor.preprocess_frames(frames)[0]
        return self.processor(images=[item.path]).pixel_values[0]  # (1, 3, H, W) under compat="original" on video

    def prompt(self, question: str | None):
        """(1, T) prompt ids (records.prompt)."""
        return prompt(self.processor, question, self.model.device)

    def generate(self, image, questions: list[str | None], stream: Item | None = None) -> list[dict]:
        """Records for each row of `image` (B, N, D) and each of `questions`, image-major (image 0's, then image
        1's, ...): one generate call, so each image goes through the decoder once for all its questions."""
        import torch

        a, tok = self.opts, self.processor.tokenizer
        prompts = [self.prompt(q) for q in questions]  # (1, T) each
        question = questions[0]  # streaming and seeded sampling ask one question a call (run_batch)
        printer = Streamer(tok, stream.input, question) if stream else None
        # --seed: draws of their own for this prompt, the same whatever ran before (one row: see run)
        generator = None if a.seed is None else torch.Generator(self.model.device).manual_seed(a.seed)
        if a.compat == "original":  # the original's beam search, which takes only these (generation/original.py)
            search = dict(compat="original", num_beams=a.num_beams, max_length=a.max_length)
        else:
            search = dict(max_new_tokens=a.max_new_tokens, num_beams=a.num_beams, do_sample=a.sample,
                          temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, generator=generator,
                          on_token=printer.add if printer else None, compile=a.compile)
        recs = ask(self.model, tok, image, prompts, questions, **search)
        if printer:
            printer.end(recs[0]["text"])
        return recs

    def question_error(self, question: str | None) -> str | None:
        """Why a question cannot be asked of this model (too long a prompt), or None; before any compute."""
        from ..generation.checks import flag, room_error

        if question is None:
            return None
        n, m, limit = len(self.prompt(question)[0]), self.opts.max_new_tokens, self.model.config.text.max_positions
        if self.opts.compat == "original":
            most = self.opts.max_length or limit
            return None if n < most else (f"the question is {n} tokens long (with [CLS]); --compat original "
                                          f"needs it shorter than max_length {most}")
        return room_error(n, m, limit, what="the question", spell=flag)

    def run(self, work: list[tuple[Item, list]]) -> None:
        """Fill batches with inputs that load; report the others as they come, in input order.
        A question the model cannot take fails alone, with its own reason; the others still run.
        Seeded sampling runs one input at a time: a generator is shared by the rows it samples, and a batch's
        encoding may round differently from one image's, so a sample would depend on its batch."""
        # NB: compat="original" on a VQA checkpoint keeps each image's aspect ratio: sizes differ, one at a time
        alone = self.opts.stream or self.opts.seed is not None or self.processor.max_size is not None
        size = 1 if alone else self.opts.batch_size
        bad = {q: why for q in dict.fromkeys(q for _, qs in work for q in qs) if (why := self.question_error(q))}
        batch = []
        for n, (item, questions) in enumerate(work):
            if item.error:  # the argument named nothing usable
                self.sink.error(item, item.error, questions)
            else:
                try:
                    pixels = self.load(item)
                except Exception as e:  # any unreadable input is reported, never fatal
                    self.sink.error(item, reason(e, item), questions)
                else:
                    for q in questions:
                        if q in bad:
                            self.sink.error(item, bad[q], [q], question=q)
                    if [q for q in questions if q not in bad]:
                        batch.append((item, pixels, [q for q in questions if q not in bad]))
            if batch and (len(batch) == size or n == len(work) - 1):
                self.run_batch(batch)
                batch = []

    def run_batch(self, batch) -> None:
        """Encode the batch's images once, then generate: the images that ask the same questions in one call
        (each image through the decoder once for all of them), else each question for the rows that ask it.
        A failure (out of memory, say) retries each input alone; alone, each question fails with its own reason.
        Streaming and seeded sampling go question by question: a stream prints one answer at a time, and a
        seeded question draws from a generator of its own."""
        import torch

        done, failed = {}, {}  # (row, question) -> record; question -> the exception it raised
        one_by_one = self.opts.stream or self.opts.sample
        try:
            with torch.inference_mode():
                pixels = torch.stack([px for _, px, _ in batch]).to(self.model.device, self.model.dtype)
                image = self.model.encode_image(pixels)  # (B, N, D): the one encoding every prompt reuses
                asking: dict[tuple, list[int]] = {}  # the questions, in order -> the rows that ask just those
                for i, (_, _, qs) in enumerate(batch):
                    asking.setdefault(tuple(qs), []).append(i)
                for qs, rows in asking.items():
                    if one_by_one or len(qs) == 1:
                        continue
                    try:
                        recs = iter(self.generate(image[rows], list(qs)))
                        done |= {(i, q): next(recs) for i in rows for q in qs}
                    except BrokenPipeError:
                        raise
                    except Exception:  # asked question by question below, each failing alone
                        pass
                for q in dict.fromkeys(q for _, _, qs in batch for q in qs):
                    rows = [i for i, (_, _, qs) in enumerate(batch) if q in qs and (i, q) not in done]
                    if not rows:
                        continue
                    stream = batch[rows[0]][0] if self.opts.stream else None
                    try:
                        for i, rec in zip(rows, self.generate(image[rows], [q], stream)):
                            done[i, q] = rec
                    except BrokenPipeError:  # --stream into a closed stdout: the run ends (cli.main)
                        raise
                    except Exception as e:  # this question only; the others go on
                        failed[q] = e
        except BrokenPipeError:
            raise
        except Exception as e:  # the encoding itself: every question of the batch
            failed = {q: e for _, _, qs in batch for q in qs if q not in failed} | failed
        for i, (item, _, qs) in enumerate(batch):  # image-major order, whatever finished
            for q in qs:
                if (i, q) in done:
                    self.sink.ok(item, done[i, q], streamed=self.opts.stream)
        left = [(item, px, [q for q in qs if (i, q) not in done]) for i, (item, px, qs) in enumerate(batch)]
        left = [x for x in left if x[2]]
        if len(left) > 1:
            for x in left:
                self.run_batch([x])
        else:
            for item, _, qs in left:
                for q in qs:
                    self.sink.error(item, reason(failed[q], item), [q], question=q)


def run_inputs(opts: RunOptions) -> int:
    """Run every input not already in --output; the exit code.

    Under torchrun (distributed.py) every rank runs this. Rank 0 alone opens --output (its lock, what it
    holds already), decides the work and hands it to the others; then, step after step, each rank runs
    its own --batch-size inputs and rank 0 shows and saves every rank's records (run_steps). A killed
    run has saved each finished record once, and the rerun computes only the others.
    """
    from ..precision import resolve_device
    from ..training import distributed

    distributed.init(resolve_device(opts.device))  # joins torchrun's process group, if launched by it
    try:
        return _run_inputs(opts)
    finally:
        distributed.teardown()


def _run_inputs(opts: RunOptions) -> int:
    from tqdm import tqdm

    from ..sources.open import open_model
    from ..training import distributed

    main, world = distributed.is_main(), distributed.world()
    try:
        opts.checkpoint = str(checkpoint_path(opts.checkpoint))  # a name: the folder it names (cheap if done)
    except ValueError as e:
        if main:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    settings = run_settings(opts)
    log, code, work = None, None, []
    try:
        if opts.stream and world > 1:
            code = EXIT_USAGE
            if main:
                print("error: --stream prints tokens as they come, from one process: run it without torchrun",
                      file=sys.stderr)
        elif main:
            try:
                log = ResultsFile(opts.output) if opts.output else None  # locked until the run ends
            except OutputError as e:
                print(f"error: {e}", file=sys.stderr)
                code = EXIT_USAGE
            else:
                code, work = plan(opts, log, settings)
        code, work = distributed.broadcast((code, work))
        if code is not None:
            return code
        try:
            opened = open_model(opts.checkpoint, opts.device, opts.dtype, opts.quantize, opts.compile, opts.compat,
                                opts.max_pixels, opts.video)
        except ValueError as e:
            if main:
                print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if main:
            for said in opened.warnings:  # e.g. no preprocessing settings: which defaults are used
                print(f"warning: {said}", file=sys.stderr)
        model, processor = opened.model, opened.processor
        total = sum(len(qs) for _, qs in work)
        sink = Sink(opts.json, tqdm(total=total, file=sys.stderr, unit="input", dynamic_ncols=True,
                                    disable=not opts.progress or opts.stream or total <= 1 or not main), log,
                    settings, hold=world > 1)
        try:
            run_steps(Runner(opts, model, processor, sink), work)
        finally:
            sink.close()
    finally:
        if log:
            log.close(drop_if_unused=True)
    failed = distributed.broadcast(sink.n_failed)  # rank 0 saw every failure: all ranks exit alike
    if failed and main:
        print(f"{failed} failure(s), each on an error line above", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def plan(opts: RunOptions, log: ResultsFile | None, settings: dict) -> tuple[int | None, list]:
    """(exit code now, or None to run; the work: [(input, its questions not yet in --output)])."""
    questions = opts.questions or [None]
    items = expand(opts.inputs, folders_are_inputs=opts.video)
    done, other = log.finished(settings) if log else (set(), {})
    stale = [(i, q) for i in items for q in questions if (i.key, q) in other]
    if stale and not opts.recompute:
        item, q = stale[0]
        print(f"error: --output {opts.output} holds {len(stale)} result(s) of these inputs made with other "
              f"settings ({differences(other[item.key, q], settings)}); rerun with those settings, choose "
              "another file, or pass --recompute to compute them again", file=sys.stderr)
        return EXIT_USAGE, []
    work = [(i, [q for q in questions if (i.key, q) not in done]) for i in items]
    work = [(i, qs) for i, qs in work if qs]
    skipped = len(items) * len(questions) - sum(len(qs) for _, qs in work)
    if skipped:
        print(f"resuming: {skipped} result(s) already in {opts.output}", file=sys.stderr)
    return (None if work else EXIT_OK), work


def run_steps(runner: Runner, work: list) -> None:
    """All of `work` in a plain run. Under torchrun, in steps of world x --batch-size inputs: rank r runs
    the r-th --batch-size of each step, then rank 0 emits every rank's records, rank by rank, so in
    input order. Every rank takes the same number of steps (an empty share when the work runs out)."""
    from ..training import distributed

    rank, world, size = distributed.rank(), distributed.world(), runner.opts.batch_size
    if world == 1:
        runner.run(work)
        return
    for start in range(0, len(work), world * size):
        mine = start + rank * size
        runner.run(work[mine : mine + size])
        held = distributed.all_gather(runner.sink.take())
        if distributed.is_main():
            for rec in (rec for records in held for rec in records):
                runner.sink.emit(*rec)
