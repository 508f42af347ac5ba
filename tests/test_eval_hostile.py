"""`git-scratch eval` and `git-scratch demo` against hostile input (issue 19): every bad flag or file one
`error:` line naming it, exit 2, before the model is loaded; no file of the user's overwritten (hashes
before and after); nothing evaluated is an error, never a perfect score; the demo's sheet bounded and its
JSON streamed.

The model is the shipped demo checkpoint (shapes.CHECKPOINT, 64 text positions, 94 tokens); a test that
must not reach the model has `load` replaced by a function that fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from _train_helpers import mini_config, new_model, one_thread  # noqa: F401 (an autouse fixture)

import git_scratch.evaluation.demo as demo_lib
import git_scratch.evaluation.evaluate as eval_lib
import git_scratch.sources.open as open_lib
from _cli_helpers import in_process as main, one_error
from git_scratch.cli import demo as demo_cli
from git_scratch.cli.preflight import WholeFile
from git_scratch.data import shapes
from git_scratch.data.batches import mean_losses
from git_scratch.data.datasets import load_dataset
from git_scratch.load import load, save
from git_scratch.preprocessing.processor import Processor

CKPT = shapes.CHECKPOINT
EVAL = ("eval", "shapes", "-c", CKPT, "--shapes-samples", "2", "--max-new-tokens", "4", "--no-progress")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_load(monkeypatch):
    """Loading a checkpoint fails the test: what is refused is refused before the model is read."""
    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the refusal")

    monkeypatch.setattr(open_lib, "load", refuse)  # how every command loads a torch checkpoint


# ---------------------------------------------------------------- 5. usage errors, before any compute
@pytest.mark.parametrize("flag,value", [
    ("--num-beams", 0), ("--max-new-tokens", 0), ("--max-new-tokens", 65), ("--batch-size", 0),
    ("--batch-size", -3), ("--shapes-samples", 0), ("--shapes-samples", -2), ("--shapes-offset", -1),
    ("--device", "nonsense"), ("--device", "cuda:7"),
])
def test_eval_refuses_a_bad_flag_with_one_line_naming_it(capsys, no_load, flag, value):
    rc, out, err = main(capsys, *EVAL, flag, value)
    assert rc == 2 and out == ""
    line = one_error(err)
    assert line.startswith(f"error: {flag} ") and str(value) in line, line


def test_eval_max_new_tokens_may_fill_every_text_position(capsys):
    """64 text positions: [CLS] and 64 new tokens fit (generation never feeds the last one back)."""
    rc, out, err = main(capsys, *EVAL, "--max-new-tokens", 64, "--shapes-samples", 1)
    assert rc == 0, err


@pytest.mark.parametrize("flag,value", [("--seed", -5), ("--n", 0), ("--n", -1), ("--device", "nonsense"),
                                        ("--device", "cuda:7")])
def test_demo_refuses_a_bad_flag_with_one_line_naming_it(capsys, no_load, flag, value):
    rc, out, err = main(capsys, "demo", flag, value, "--json")
    assert rc == 2 and out == ""
    line = one_error(err)
    assert line.startswith(f"error: {flag} ") and str(value) in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where no CUDA device is available")
@pytest.mark.parametrize("command", [EVAL, ("demo", "--json")])
def test_device_cuda_without_a_gpu_is_one_line(capsys, no_load, command):
    rc, _, err = main(capsys, *command, "--device", "cuda")
    assert rc == 2 and one_error(err).startswith("error: --device cuda: no CUDA device available")


# ---------------------------------------------------------------- 2. the file written: never the user's
@pytest.fixture
def annotations(tmp_path) -> Path:
    Image.new("RGB", (96, 96), "red").save(tmp_path / "a.png")
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps({"image": "a.png", "caption": "a large red square"}) + "\n")
    return path


def test_eval_refuses_to_write_its_own_annotation_file(annotations, capsys, no_load):
    before = digest(annotations)
    rc, out, err = main(capsys, "eval", annotations, "-c", CKPT, "--results", annotations, "--no-progress")
    assert rc == 2 and out == ""
    assert one_error(err) == (f"error: --results {annotations}: one of this run's inputs; it is left as it was: "
                              "choose another file")
    assert digest(annotations) == before


def test_eval_refuses_to_write_an_image_it_reads(annotations, capsys, no_load):
    image = annotations.parent / "a.png"
    before = digest(image)
    rc, _, err = main(capsys, "eval", annotations, "-c", CKPT, "--results", image, "--no-progress")
    assert rc == 2 and one_error(err).startswith(f"error: --results {image}: not a file git-scratch wrote")
    assert digest(image) == before


def test_eval_refuses_to_write_a_checkpoint_file_even_through_a_link(tmp_path, capsys, no_load):
    ckpt = shutil.copytree(CKPT, tmp_path / "ckpt")
    link = tmp_path / "results.json"
    link.symlink_to(ckpt / "config.json")
    before = digest(ckpt / "config.json")
    rc, _, err = main(capsys, *EVAL[:3], ckpt, *EVAL[4:], "--results", link)
    assert rc == 2
    assert one_error(err) == (f"error: --results {link}: one of this run's inputs (it is {ckpt / 'config.json'}); it "
                              "is left as it was: choose another file")
    assert digest(ckpt / "config.json") == before and link.is_symlink()


@pytest.mark.parametrize("command,flag,name", [(EVAL, "--results", "notes.json"), (("demo",), "--out", "photo.png")])
def test_an_existing_file_git_scratch_did_not_write_is_left_as_it_was(tmp_path, capsys, no_load, command, flag, name):
    user = tmp_path / name
    if name.endswith(".png"):
        Image.new("RGB", (8, 8), "blue").save(user)  # a real PNG, but not a contact sheet
    else:
        user.write_text('{"captions": [], "answers": []}\n')  # even one shaped like our results
    before = digest(user)
    rc, out, err = main(capsys, *command, flag, user)
    assert rc == 2 and out == ""
    assert one_error(err) == (f"error: {flag} {user}: not a file git-scratch wrote; it is left as it was: choose "
                              "another file, or remove it first")
    assert digest(user) == before


@pytest.mark.parametrize("command,flag", [(EVAL, "--results"), (("demo",), "--out")])
@pytest.mark.parametrize("where,says", [
    ("folder", "a folder; name a file"), ("below a file", "is a file, not a folder"),
    ("missing folder", "no folder"), ("unwritable", "cannot write in /sys"),
])
def test_an_unusable_place_is_refused_before_any_compute(tmp_path, capsys, no_load, command, flag, where, says):
    if where == "unwritable" and not os.path.isdir("/sys"):
        pytest.skip("needs Linux's read-only /sys (a chmod'ed folder is writable to root)")
    (tmp_path / "notes.txt").write_text("mine\n")
    path = {"folder": tmp_path, "below a file": tmp_path / "notes.txt" / "out",
            "missing folder": tmp_path / "no" / "out", "unwritable": Path("/sys/git-scratch-out")}[where]
    rc, out, err = main(capsys, *command, flag, path)
    assert rc == 2 and out == ""
    line = one_error(err)
    assert line.startswith(f"error: {flag} {path}: ") and says in line, line
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_eval_replaces_only_its_own_results_and_marks_them(tmp_path, capsys):
    results = tmp_path / "results.json"
    for _ in range(2):  # the rerun replaces the first run's file
        rc, out, err = main(capsys, *EVAL, "--results", results)
        assert rc == 0, err
    written = json.loads(results.read_text())
    assert written["git_scratch"] == {"command": "eval", "checkpoint": str(CKPT.resolve()), "data": "shapes"}
    assert len(written["captions"]) == 1 and len(written["answers"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left beside it


def test_demo_replaces_only_its_own_sheet_and_marks_it(tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    for n in (2, 1):
        rc, out, err = main(capsys, "demo", "--seed", 7, "--n", n, "--out", sheet)
        assert rc == 0, err
    with Image.open(sheet) as im:
        assert im.info["Software"] == "git-scratch demo"
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old results\n")
    whole = WholeFile(str(target), "--results", ours=lambda path: True)

    def crash(f):
        f.write(b"half a fi")
        raise OSError(28, "No space left on device")

    with pytest.raises(ValueError, match=f"^--results {target}: cannot write it: No space left on device$"):
        whole.write(crash)
    assert target.read_text() == "old results\n" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ---------------------------------------------------------------- 6. a tokenizer larger than the vocabulary
@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory) -> Path:
    """A checkpoint of 50 tokens carrying the shapes tokenizer's 94: another model's tokenizer files."""
    cfg = mini_config()
    path = tmp_path_factory.mktemp("small-vocab") / "ckpt"
    save(new_model(replace(cfg, text=replace(cfg.text, vocab_size=50))), path)
    for name in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(CKPT / name, path / name)
    return path


@pytest.mark.parametrize("command", [("eval", "shapes", "--shapes-samples", "2", "--no-progress"),
                                     ("demo", "--n", "1", "--json")])
def test_a_tokenizer_larger_than_the_vocabulary_is_refused_before_any_compute(small_vocab, capsys, monkeypatch,
                                                                              command):
    def no_compute(*args, **kwargs):
        raise AssertionError("computed with a tokenizer the model cannot embed")

    monkeypatch.setattr(eval_lib, "mean_losses", no_compute)
    monkeypatch.setattr(demo_cli, "predictions", no_compute)
    rc, out, err = main(capsys, *command, "-c", small_vocab)
    assert rc == 2 and out == ""
    assert one_error(err) == (f"error: cannot load checkpoint: {small_vocab}: the tokenizer has 94 tokens, the model "
                              "50: tokenizer files of another model?")


# ---------------------------------------------------------------- 7. nothing evaluated is an error
@pytest.mark.parametrize("rows", ["empty", "every row bad", "every image unreadable"])
def test_evaluating_nothing_is_an_error_not_a_perfect_score(tmp_path, capsys, rows):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    lines = {"empty": [], "every row bad": [{"image": "bad.png"}, "not json"],
             "every image unreadable": [{"image": "bad.png", "caption": "a cat"},
                                        {"image": "bad.png", "question": "what?", "answer": "a cat"}]}[rows]
    data = tmp_path / "val.jsonl"
    data.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    rc, out, err = main(capsys, "eval", data, "-c", CKPT, "--no-progress")
    assert rc == 2 and out == ""
    assert one_error(err) == f"error: no readable example in {data}"


def test_mean_losses_of_no_readable_example_is_a_value_error(tmp_path):
    """training's held-out evaluation relies on this: a loss of 0.0 would read as a perfect model."""
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "val.jsonl").write_text(json.dumps({"image": "bad.png", "caption": "a cat"}) + "\n")
    data = load_dataset(tmp_path / "val.jsonl")
    with pytest.raises(ValueError, match=f"no readable example in {tmp_path / 'val.jsonl'}"):
        mean_losses(load(CKPT), data, Processor.from_pretrained(CKPT), batch_size=4)


def test_eval_refuses_a_question_too_long_for_the_text_positions_before_any_compute(annotations, capsys,
                                                                                   monkeypatch):
    monkeypatch.setattr(eval_lib, "mean_losses", lambda *a, **k: pytest.fail("computed losses first"))
    row = {"image": "a.png", "question": "what " * 60 + "?", "answer": "red"}
    annotations.write_text(json.dumps(row) + "\n")
    rc, out, err = main(capsys, "eval", annotations, "-c", CKPT, "--max-new-tokens", 20, "--no-progress")
    assert rc == 2 and out == ""
    assert one_error(err).startswith(f"error: {annotations}: the longest prompt is 62 tokens long (with [CLS]); "
                                     "with max_new_tokens 20 it needs 81 text positions, the model has 64")


# ---------------------------------------------------------------- 10. demo --n: a bounded sheet, streamed JSON
def test_demo_sheet_draws_at_most_its_cap_and_the_accuracies_count_every_image(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_cli, "SHEET_IMAGES", 2)
    drawn = []
    monkeypatch.setattr(demo_cli, "contact_sheet", lambda records, title: drawn.append((records, title))
                        or Image.new("RGB", (4, 4)))
    rc, out, err = main(capsys, "demo", "--seed", 7, "--n", 3, "--out", tmp_path / "sheet.png")
    assert rc == 0, err
    (records, title), = drawn
    assert {r["seed"] for r in records} == {7, 8}
    note = "the sheet shows the first 2 of 3 images; the accuracies count all 3"
    assert title.endswith("\n" + note) and err.splitlines() == [note]
    assert "captions 100% exact (3)" in out


def test_demo_json_prints_each_batch_as_it_is_computed(capsys, monkeypatch):
    """A stop after the first batch finds that batch's records already printed: none are held back."""
    def first_batch_then_stop(model, processor, seeds, batch_size=64):
        yield demo_lib.predict(model, processor, list(seeds)[:1])
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_cli, "predictions", first_batch_then_stop)
    rc, out, err = main(capsys, "demo", "--seed", 2_000_000_000, "--n", 1000, "--json")
    assert rc == 130
    seeds = {json.loads(line)["seed"] for line in out.splitlines()}
    assert seeds == {2_000_000_000}


# ---------------------------------------------------------------- 4. the image check of caption, in eval too
def test_eval_skips_an_extreme_aspect_image_as_caption_refuses_it(tmp_path, capsys):
    """A 60000x1 PNG (a few hundred bytes) would be resized to 13,440,000 x 96 pixels by the demo model's
    processor; eval names it once as skipped and scores the other row (tests/test_data_hostile.py bounds the
    memory of reading and checking it)."""
    Image.new("RGB", (96, 96), "red").save(tmp_path / "a.png")
    Image.new("RGB", (60000, 1), "red").save(tmp_path / "wide.png")
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"image": name, "caption": "a large red square"}) + "\n"
                            for name in ("wide.png", "a.png")))
    rc, out, err = main(capsys, "eval", data, "-c", CKPT, "--no-progress", "--max-new-tokens", "4")
    assert rc == 0 and "Traceback" not in err
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and f"{data}:1" in skipped[0] and "extreme aspect ratio" in skipped[0]
    assert json.loads(out)["skipped"] == 1
