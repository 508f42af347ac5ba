"""The one-call API (git_scratch.caption, git_scratch.answer) gives the command line's records, and GIT.generate
takes images through the checkpoint's processor. Every expectation is another route's output, never a string."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import git_scratch
from _cli_helpers import in_process
from git_scratch.data import shapes
from git_scratch.generation.options import GenerationOptions
from git_scratch.pipeline import api

QUESTIONS = ["how many shapes are there?", "what color is the circle?"]
KEPT = ("question", "text", "ids", "score")  # what the API returns of a --json record


@pytest.fixture(scope="module")
def pictures():
    """Three shapes images, one of them wider than tall (so the processor resizes and crops it)."""
    ims = [shapes.sample(seed)[0] for seed in (1, 2, 3)]
    ims[2] = ims[2].resize((130, 96))
    return ims


@pytest.fixture
def files(pictures, tmp_path):
    paths = []
    for i, im in enumerate(pictures):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    return paths


def cli_records(capsys, command, paths, *options) -> list[dict]:
    rc, out, err = in_process(capsys, command, *paths, "-c", "demo", "--json", "--no-progress", *options)
    assert rc == 0, err
    return [{k: rec[k] for k in KEPT} for rec in map(json.loads, out.splitlines())]


@pytest.mark.parametrize("options, flags", [({}, ()), ({"num_beams": 2, "max_new_tokens": 8},
                                                        ("--num-beams", "2", "--max-new-tokens", "8"))])
def test_caption_gives_the_command_lines_records(capsys, files, options, flags):
    got = git_scratch.caption([str(p) for p in files], batch_size=2, progress=False, **options)
    assert got == cli_records(capsys, "caption", files, "--batch-size", "2", *flags)


def test_answer_gives_the_vqa_records_image_major(capsys, files):
    got = git_scratch.answer(files, QUESTIONS, batch_size=2, progress=False)
    assert [r["question"] for r in got] == QUESTIONS * len(files)
    assert got == cli_records(capsys, "vqa", files, "-q", QUESTIONS[0], "-q", QUESTIONS[1], "--batch-size", "2")
    assert git_scratch.answer(files[0], QUESTIONS[1]) == got[1:2]  # one image, one question: still a list


def test_seeded_sampling_gives_the_command_lines_draws(capsys, files):
    got = git_scratch.answer(files, QUESTIONS, do_sample=True, temperature=3.0, seed=3, progress=False)
    assert got == cli_records(capsys, "vqa", files, "-q", QUESTIONS[0], "-q", QUESTIONS[1], "--sample",
                              "--temperature", "3", "--seed", "3")


def test_pil_images_arrays_and_tensors_give_the_records_of_their_png(pictures, files):
    by_path = git_scratch.caption(files, batch_size=2)
    arrays = [np.array(im) for im in pictures]  # (H, W, 3) uint8
    assert git_scratch.caption(pictures, batch_size=2) == by_path
    assert git_scratch.caption(arrays, batch_size=2) == by_path
    assert git_scratch.caption([torch.from_numpy(a).permute(2, 0, 1) for a in arrays], batch_size=2) == by_path
    assert git_scratch.caption(pictures[1]) == git_scratch.caption(files[1:2])  # one image alone: a list of one


def test_a_float_tensor_is_refused_not_guessed(pictures):
    pixels = torch.from_numpy(np.array(pictures[0])).permute(2, 0, 1) / 255  # (3, H, W) in 0..1
    with pytest.raises(ValueError, match=r"uint8 \(C, H, W\)"):
        git_scratch.caption(pixels)


def test_bad_decoding_options_fail_with_the_shared_wording_before_loading(monkeypatch, pictures):
    with pytest.raises(ValueError) as shared:
        GenerationOptions(do_sample=True, top_p=0)
    api.opened.cache_clear()
    monkeypatch.setattr(api, "open_model", lambda *a, **k: pytest.fail("loaded a model for a bad request"))
    with pytest.raises(ValueError) as got:
        git_scratch.caption(pictures[0], do_sample=True, top_p=0)
    assert str(got.value) == str(shared.value)
    with pytest.raises(TypeError, match="no_such_option"):
        git_scratch.caption(pictures[0], no_such_option=1)


def test_the_opened_model_is_reused_across_calls(monkeypatch, pictures):
    opens = []
    real = api.open_model
    monkeypatch.setattr(api, "open_model", lambda *a, **k: opens.append(a) or real(*a, **k))
    api.opened.cache_clear()
    first = git_scratch.caption(pictures[0])
    assert git_scratch.answer(pictures[0], QUESTIONS[0]) and git_scratch.caption(pictures[0]) == first
    assert len(opens) == 1
    git_scratch.caption(pictures[0], device="cpu")  # other options: another model
    assert len(opens) == 2


def test_the_progress_bar_shows_for_more_than_one_batch(capsys, pictures):
    capsys.readouterr()
    git_scratch.caption(pictures, batch_size=len(pictures))
    assert capsys.readouterr().err == ""
    git_scratch.caption(pictures, batch_size=1)
    assert "3/3" in capsys.readouterr().err
    git_scratch.caption(pictures, batch_size=1, progress=False)
    assert capsys.readouterr().err == ""


def test_several_returned_sequences_are_several_records(pictures):
    best = git_scratch.caption(pictures[:2], num_beams=3)
    two = git_scratch.caption(pictures[:2], num_beams=3, num_return_sequences=2)
    assert len(two) == 4 and [two[0], two[2]] == best  # each image's best beam first


def test_generate_takes_images_through_the_checkpoints_processor(pictures, files):
    model = git_scratch.load(shapes.CHECKPOINT)
    processor = git_scratch.Processor.from_pretrained(shapes.CHECKPOINT)
    pixels = processor(images=pictures).pixel_values
    expected = model.generate(pixels, max_new_tokens=8)
    assert torch.equal(model.generate(pictures, processor=processor, max_new_tokens=8), expected)
    assert torch.equal(model.generate([str(p) for p in files], processor=processor, max_new_tokens=8), expected)
    ids = [r["ids"] for r in git_scratch.caption(pictures, max_new_tokens=8)]
    assert ids == [[t for t in row if t != model.config.text.pad_id] for row in expected.tolist()]
    model.source = None  # a model built in memory knows no checkpoint
    with pytest.raises(ValueError, match="pass processor="):
        model.generate(pictures[0])
    model.source = shapes.CHECKPOINT  # as git_scratch.load records it
    assert torch.equal(model.generate(pictures[:1], max_new_tokens=8), expected[:1])
