"""The `git-scratch` command line, end to end.

Parity: the console script, run as a subprocess on a converted random-init checkpoint with the real
BERT vocabulary, gives the same token ids as transformers' own CLIPImageProcessor + BertTokenizerFast +
GitForCausalLM.generate on the same files and the same real photographs.
Robustness: every kind of bad input becomes one error line naming the file and the reason, the rest
of the batch still runs, the exit code says so, and `--output` resumes a killed run without losing or
repeating anything.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from _cli_helpers import HFPipeline, build_checkpoint, cli_command, cli_env, photo, records, run_cli

from git_scratch import cli
from git_scratch.cli.items import expand
from git_scratch.sources import open as sources_open

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")
QUESTIONS = ("what is in the picture?", "how many people are there?")
GIF = "no_time_for_that_tiny.gif"  # 24 frames
FAST = ("--max-new-tokens", "8", "--no-progress")
# Scores are means of 8 float32 log-softmax values over 30,522 words: the two sides agree to <= 5e-7. Argmax ids
# shrug off small input changes, the score does not: pixels one grey level (1/255) off on one side move it >= 1e-4.
SCORE_TOL = 2e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(hf_dir, our_dir): image checkpoint with 30,522 real words."""
    return build_checkpoint(tmp_path_factory.mktemp("words"))


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory):
    """(hf_dir, our_dir): the same with 3 temporal embeddings (num_image_with_embedding=3)."""
    return build_checkpoint(tmp_path_factory.mktemp("words-video"), video=True)


@pytest.fixture(scope="module")
def hf(ckpt):
    return HFPipeline(ckpt[0])


def main(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (no torch start-up): (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help and usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


# ---------------------------------------------------------------- help
@pytest.mark.parametrize("command", ["caption", "vqa", "video", "convert"])
def test_every_subcommand_help_teaches_with_an_example_and_exit_codes(capsys, command):
    rc, out, _ = main(capsys, command, "--help")
    assert rc == 0
    assert "examples:" in out and f"git-scratch {command} " in out.split("examples:")[1]
    assert "exit codes:" in out


def test_top_level_help_lists_commands_and_exit_codes(capsys):
    rc, out, _ = main(capsys, "--help")
    assert rc == 0
    for word in ("caption", "vqa", "video", "convert", "exit codes:", "0 ", "1 ", "2 "):
        assert word in out


# ---------------------------------------------------------------- parity with transformers, through the console script
def test_caption_gives_transformers_ids_for_real_photos(ckpt, hf):
    paths = [str(photo(p)) for p in PHOTOS]
    r = run_cli("caption", *paths, "--checkpoint", ckpt[1], "--json", "--batch-size", "2", *FAST)
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    assert [rec["input"] for rec in recs] == paths
    for rec, path in zip(recs, paths):
        want, score = hf.generate(hf.pixels([path]), max_new_tokens=8, do_sample=False)
        assert rec["ids"] == want, path
        assert rec["score"] == pytest.approx(score, abs=SCORE_TOL), path
        assert rec["question"] is None
        assert rec["text"] == hf.decode(want) and rec["text"]
    texts = {rec["text"] for rec in recs}
    assert len(texts) > 1, "every photo got the same caption: the image does not reach the output"


def test_vqa_gives_transformers_ids_for_each_question(ckpt, hf):
    paths = [str(photo(p)) for p in PHOTOS[:2]]
    qs = [a for q in QUESTIONS for a in ("-q", q)]
    r = run_cli("vqa", *paths, *qs, "--checkpoint", ckpt[1], "--json", *FAST)
    assert r.returncode == 0, r.stderr
    got = {(rec["input"], rec["question"]): rec for rec in records(r.stdout)}
    assert set(got) == {(p, q) for p in paths for q in QUESTIONS}
    for (path, q), rec in got.items():
        want, score = hf.generate(hf.pixels([path]), q, max_new_tokens=8, do_sample=False)
        assert rec["ids"] == want, (path, q)  # the prompt ([CLS] + question) included
        assert rec["score"] == pytest.approx(score, abs=SCORE_TOL), (path, q)
        # the text is the answer only: the decoded ids after the prompt
        assert rec["text"] == hf.decode(want[len(hf.prompt(q)[0]):])


def test_beam_search_gives_transformers_ids(ckpt, hf):
    path = str(photo("astronaut.png"))
    r = run_cli("caption", path, "--checkpoint", ckpt[1], "--json", "--num-beams", "3", *FAST)
    assert r.returncode == 0, r.stderr
    (rec,) = records(r.stdout)
    want, score = hf.generate(hf.pixels([path]), max_new_tokens=8, num_beams=3, do_sample=False)
    assert rec["ids"] == want
    assert rec["score"] == pytest.approx(score, abs=SCORE_TOL)  # transformers' sequences_scores


def _frames_dir(root: Path) -> Path:
    """The GIF's 24 frames as numbered PNGs (lossless), in a folder."""
    folder = root / "frames"
    folder.mkdir(exist_ok=True)
    with Image.open(photo(GIF)) as im:
        for i in range(im.n_frames):
            im.seek(i)
            im.convert("RGB").save(folder / f"frame{i}.png")  # frame2 < frame10: natural order
    return folder


def test_video_gives_transformers_ids_for_a_gif_and_a_frame_folder(video_ckpt, tmp_path):
    hf_video = HFPipeline(video_ckpt[0])
    folder = _frames_dir(tmp_path)
    gif = str(photo(GIF))
    q = "what is he doing?"
    r = run_cli("video", gif, folder, "-q", q, "--checkpoint", video_ckpt[1], "--json", *FAST)
    assert r.returncode == 0, r.stderr
    # 3 frames from 24: the middle frame of each third, computed here independently of video.py
    picked = [4, 12, 20]
    with Image.open(photo(GIF)) as im:
        frames = []
        for i in picked:
            im.seek(i)
            frames.append(im.convert("RGB"))
    want, score = hf_video.generate(hf_video.pixels(frames).unsqueeze(0), q, max_new_tokens=8, do_sample=False)
    recs = records(r.stdout)
    assert [rec["input"] for rec in recs] == [gif, str(folder)]
    for rec in recs:
        assert rec["ids"] == want and rec["question"] == q
        assert rec["score"] == pytest.approx(score, abs=SCORE_TOL)


# ---------------------------------------------------------------- one image encoding, however many prompts
def test_questions_about_one_image_cost_one_encoding(ckpt, capsys, monkeypatch):
    """One vision encoding per image, and one pass of the image through the decoder for all its questions
    (generate with three prompts for each image); sampling asks question by question, each with its own draws."""
    from git_scratch.generation.decoders import Cached
    from git_scratch.model import GIT

    calls, prefilled = [], []
    encode, prefill = GIT.encode_image, Cached.prefill_image
    monkeypatch.setattr(Cached, "prefill_image", lambda self: prefilled.append(len(self.image)) or prefill(self))

    def counting(self, pixels, *a, **k):
        calls.append(pixels.shape[0])
        return encode(self, pixels, *a, **k)

    monkeypatch.setattr(GIT, "encode_image", counting)
    img = photo("astronaut.png")
    rc, out, err = main(capsys, "vqa", img, "-q", "a?", "-q", "b?", "-q", "c?", "-c", ckpt[1], *FAST)
    assert rc == 0, err
    assert len(out.splitlines()) == 3
    assert calls == [1]
    # two images, three questions, one batch: still one encoding, of both images
    calls.clear()
    rc, out, err = main(capsys, "vqa", img, photo("chelsea.png"), "-q", "a?", "-q", "b?", "-q", "c?",
                        "-c", ckpt[1], *FAST)
    assert rc == 0, err
    assert calls == [2] and len(out.splitlines()) == 6
    assert prefilled == [1, 2]  # the first run's one image, then both images: once each for three questions
    prefilled.clear()
    rc, out, err = main(capsys, "vqa", img, photo("chelsea.png"), "-q", "a?", "-q", "b?", "-c", ckpt[1], "--sample",
                        "--seed", "3", *FAST)
    assert rc == 0, err
    assert len(out.splitlines()) == 4 and prefilled == [1, 1, 1, 1]  # seeded: one input, one question a call


# ---------------------------------------------------------------- output modes
def test_stream_prints_the_same_text_word_by_word(ckpt, capsys):
    img = photo("chelsea.png")
    rc, plain, _ = main(capsys, "caption", img, "-c", ckpt[1], *FAST)
    assert rc == 0
    rc, streamed, _ = main(capsys, "caption", img, "-c", ckpt[1], "--stream", *FAST)
    assert rc == 0
    assert streamed == plain and plain.startswith(f"{img}\t")


def test_many_inputs_show_a_progress_bar_on_stderr(ckpt, capsys):
    imgs = [photo(p) for p in PHOTOS]
    rc, out, err = main(capsys, "caption", *imgs, "-c", ckpt[1], "--batch-size", "2", "--max-new-tokens", "4")
    assert rc == 0 and len(out.splitlines()) == 3
    assert "3/3" in err and "3/3" not in out  # tqdm's final count, on stderr only


def test_sampling_with_a_seed_repeats(ckpt, capsys):
    args = ("caption", photo("coffee.png"), "-c", ckpt[1], "--sample", "--top-p", "0.9", "--temperature", "1.5",
            "--json", *FAST)
    runs = [records(main(capsys, *args, "--seed", "7")[1])[0]["ids"] for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("bad,message", [
    (("--stream", "--num-beams", "2"),
     "--stream needs greedy or --sample decoding: beam search knows its best sequence only at the end"),
    (("--stream", "--json"), "--stream prints text; it cannot be combined with --json (use --output for JSON records)"),
    (("--top-p", "0"), "--top-p must be in (0, 1], got 0.0"),
    (("--max-new-tokens", "0"), "--max-new-tokens must be at least 1, got 0"),  # generation/checks.py's wording
    (("--batch-size", "-1"), "argument --batch-size/-b: must be > 0, got -1"),
    (("--recompute",), "--recompute needs --output: it recomputes results that file holds"),
])
def test_contradictory_options_are_usage_errors(ckpt, capsys, bad, message):
    rc, _, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt[1], *bad)
    assert rc == 2 and err.splitlines()[-1] == f"git-scratch caption: error: {message}"
    assert err.startswith("usage: git-scratch caption ")


# ---------------------------------------------------------------- inputs: folders, globs
def test_folders_and_globs_expand_in_name_order(tmp_path):
    for name in ("b.png", "a.JPG", "c.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    items = expand([str(tmp_path), str(tmp_path / "**" / "*.png"), str(tmp_path / "none*.png")])
    names = [Path(i.input).name for i in items]
    # the folder gives its images (not recursive), the glob adds d.png (b.png only once), no match is an error
    assert names == ["a.JPG", "b.png", "d.png", "none*.png"]
    assert [i.error for i in items] == [None] * 3 + ["no file matches this pattern"]


# ---------------------------------------------------------------- bad inputs
def _png_claiming(path: Path, w: int, h: int) -> None:
    """A valid PNG signature + IHDR claiming w x h pixels, with almost no data: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


TRUNCATED = "truncated or corrupt image data (image file is truncated"  # + Pillow's count of bytes left


def bad_batch(root: Path) -> tuple[list[str], dict[str, str]]:
    """A folder of good and bad images; (command-line inputs, {bad input: expected reason})."""
    d = root / "batch"
    d.mkdir()
    shutil.copy(photo("astronaut.png"), d / "a_good.png")
    shutil.copy(photo("chelsea.png"), d / "b_good.png")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.jpg").write_text("not an image at all\n")
    data = photo("astronaut.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    data = photo("rocket.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 3])
    _png_claiming(d / "bomb.png", 100_000, 100_000)
    shutil.copy(photo("multipage_rgb.tif"), d / "unreadable.tif")
    inputs = [str(d), str(d / "missing.png"), str(root / "nowhere" / "*.png")]
    truncated = TRUNCATED
    bad = {  # input -> its reason, exactly; the truncated files' reasons begin so
        str(d / "empty.png"): "empty file (0 bytes)",
        str(d / "notes.jpg"): "not an image Pillow can read",
        str(d / "cut.png"): truncated,
        str(d / "cut.jpg"): truncated,
        str(d / "bomb.png"): "over Pillow's decompression-bomb limit: Image size (10000000000 pixels) exceeds limit of "
                             "178956970 pixels, could be decompression bomb DOS attack.",
        str(d / "unreadable.tif"): "not an image Pillow can read",
        str(d / "missing.png"): "no such file or directory",
        str(root / "nowhere" / "*.png"): "no file matches this pattern",
    }
    return inputs, bad


def test_bad_inputs_are_named_and_the_batch_goes_on(ckpt, tmp_path):
    inputs, bad = bad_batch(tmp_path)
    out = tmp_path / "results.jsonl"
    r = run_cli("caption", *inputs, "-c", ckpt[1], "--json", "--batch-size", "3", "-o", out, *FAST)
    assert r.returncode == 1, r.stderr
    recs = records(r.stdout)
    good = [rec["input"] for rec in recs if "error" not in rec]
    assert sorted(Path(g).name for g in good) == ["a_good.png", "b_good.png"]
    errors = {rec["input"]: rec["error"] for rec in recs if "error" in rec}
    assert set(errors) == set(bad)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == len(bad)  # one line per bad input
    whole = {path: reason for path, reason in bad.items() if reason != TRUNCATED}
    assert {path: errors[path] for path in whole} == whole
    assert all(errors[path].startswith(TRUNCATED) for path in set(bad) - set(whole))
    assert sorted(lines) == sorted(f"error: {path}: {errors[path]}" for path in bad)
    assert records(out.read_text()) == recs  # --output holds the same records, errors too

    # a rerun skips the finished images and tries the failed ones again
    r = run_cli("caption", *inputs, "-c", ckpt[1], "--json", "-o", out, *FAST)
    assert r.returncode == 1
    assert "resuming: 2 result(s) already in" in r.stderr
    assert {rec["input"] for rec in records(r.stdout)} == set(bad)


def test_pixel_budget_is_an_option(ckpt, capsys):
    img = photo("astronaut.png")  # 512 x 512 = 262,144 pixels
    rc, out, err = main(capsys, "caption", img, "-c", ckpt[1], "--max-pixels", "100000", "--json", *FAST)
    reason = "512x512 = 262144 pixels is over the budget of 100000 (possible decompression bomb)"
    assert rc == 1 and records(out)[0]["error"] == reason
    assert err.splitlines() == [f"error: {img}: {reason}", "1 failure(s), each on an error line above"]


def test_a_bad_video_is_named_and_the_rest_go_on(video_ckpt, tmp_path, capsys):
    empty_folder = tmp_path / "no_frames"
    empty_folder.mkdir()
    junk = tmp_path / "clip.mp4"
    junk.write_bytes(b"\0" * 1000)
    gif = photo(GIF)
    rc, out, err = main(capsys, "video", empty_folder, junk, gif, "-c", video_ckpt[1], "--json", *FAST)
    assert rc == 1
    recs = {rec["input"]: rec for rec in records(out)}
    no_frames = "no frame images (.bmp, .gif, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp) in this folder"
    assert recs[str(empty_folder)]["error"] == no_frames
    assert recs[str(junk)]["error"].startswith("not a video PyAV can read (")  # + FFmpeg's own words
    assert "error" not in recs[str(gif)]
    assert error_lines(err) == [f"error: {empty_folder}: {no_frames}", f"error: {junk}: {recs[str(junk)]['error']}"]


# ---------------------------------------------------------------- resume
def test_a_killed_run_resumes_with_every_image_exactly_once(ckpt, tmp_path):
    N, B = 36, 3  # batches of 3 images, 20 tokens each: seconds of work left after the first batch lands
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(N):
        os.link(photo(PHOTOS[i % 3]), folder / f"img{i:02d}.png")
    out = tmp_path / "results.jsonl"
    args = [*cli_command(), "caption", str(folder), "-c", str(ckpt[1]), "-o", str(out), "--batch-size", str(B),
            "--max-new-tokens", "20", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    try:  # kill it as soon as the first batch is on disk: in the middle of the second batch
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= B:
                break
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up, no atexit: a crash
        proc.wait()
    at_kill = out.read_bytes().count(b"\n")  # whole lines; a half-written one would be dropped on resume
    assert B <= at_kill < N, f"the run was not killed mid-run ({at_kill} of {N} lines)"

    r = subprocess.run(args, capture_output=True, text=True, timeout=120, env=cli_env())
    assert r.returncode == 0, r.stderr
    assert f"resuming: {at_kill} result(s)" in r.stderr
    inputs = [rec["input"] for rec in records(out.read_text())]
    assert sorted(inputs) == sorted(str(folder / f"img{i:02d}.png") for i in range(N))  # each exactly once


def test_an_incomplete_last_line_is_dropped_and_redone(ckpt, tmp_path, capsys):
    imgs = [photo(p) for p in PHOTOS]
    out = tmp_path / "results.jsonl"
    rc, _, _ = main(capsys, "caption", *imgs[:2], "-c", ckpt[1], "-o", out, *FAST)
    assert rc == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # a crash in the middle of writing line 2
    rc, stdout, err = main(capsys, "caption", *imgs, "-c", ckpt[1], "-o", out, *FAST)
    assert rc == 0 and "resuming: 1 result(s)" in err
    recs = records(out.read_text())  # every line is whole JSON again
    assert [r["input"] for r in recs] == [str(p) for p in imgs]


def test_nothing_left_to_do_exits_0_without_loading(ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "results.jsonl"
    img = photo("astronaut.png")
    assert main(capsys, "caption", img, "-c", ckpt[1], "-o", out, *FAST)[0] == 0

    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded with nothing left to do")

    monkeypatch.setattr(sources_open, "open_model", no_loading)  # how every command opens its model
    rc, stdout, err = main(capsys, "caption", img, "-c", ckpt[1], "-o", out, *FAST)
    assert rc == 0 and stdout == "" and "resuming: 1 result(s)" in err


# ---------------------------------------------------------------- convert
def test_convert_subcommand_is_the_converter(ckpt, tmp_path):
    dst = tmp_path / "converted"
    r = run_cli("convert", ckpt[0], dst)
    assert r.returncode == 0, r.stderr
    import git_scratch

    a, b = git_scratch.load(dst).state_dict(), git_scratch.load(ckpt[1]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert (dst / "tokenizer.json").is_file() and (dst / "preprocessor_config.json").is_file()
    r = run_cli("convert", tmp_path / "nope", tmp_path / "x")
    assert r.returncode == 2 and r.stderr == f"error: {tmp_path / 'nope'}: not a directory\n"


# ---------------------------------------------------------------- failures inside a batch, and setup errors
def test_a_question_that_fails_is_named_and_the_others_still_answer(ckpt, capsys):
    imgs = [photo("astronaut.png"), photo("chelsea.png")]
    long = " ".join(["why"] * 80)  # more text positions than the tiny model has (64)
    rc, out, err = main(capsys, "vqa", *imgs, "-q", "what?", "-q", long, "-c", ckpt[1], "--json", *FAST)
    assert rc == 1
    recs = records(out)
    assert {(r["input"], r["question"]) for r in recs if "error" not in r} == {(str(i), "what?") for i in imgs}
    failed = [r for r in recs if "error" in r]
    assert {(r["input"], r["question"]) for r in failed} == {(str(i), long) for i in imgs}
    reason = ("the question is 81 tokens long (with [CLS]); with --max-new-tokens 8 it needs 88 text positions, "
              "the model has 64 (max_position_embeddings)")
    assert [r["error"] for r in failed] == [reason, reason]
    assert error_lines(err) == [f"error: {i} (question 'why why why why why why why why'... (80 words)): {reason}"
                                for i in imgs]
