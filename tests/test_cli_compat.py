"""`--compat original` on the command line: the original GIT's pixels, question cut and beam search, end to end.

Each part is checked against its own reference elsewhere (test_original_preprocessing.py: pixels against Pillow
and numpy; test_beam_original.py: the search against the original's rules and an exhaustive search). Here the
command line must put them together: its records equal the Python API's `compat="original"` path, the
settings say which mode made a result, and what the original cannot do is a usage error.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from _cli_helpers import build_checkpoint, photo, records, run_cli

import git_scratch
from git_scratch import cli
from git_scratch.generation.original import original_beam_search
from git_scratch.preprocessing.processor import Processor

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")
MAX_LENGTH = 10  # [CLS] + 8 tokens + [SEP]: the search stays short on a random model
# Scores: the CLI and this file compute the same float32 sums in the same order, in separate processes; one
# thread each, so the sums agree to float32 rounding (< 1e-6 here), while a pixel offset moves them >= 1e-3.
SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("words"))[1]


@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory):
    """A 3-frame checkpoint whose temporal embeddings are random, not transformers' zeros: they must show."""
    path = build_checkpoint(tmp_path_factory.mktemp("words-video"), video=True)[1]
    state = load_file(path / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for k in [k for k in state if k.startswith("img_proj.temporal_embed.")]:
        state[k] = torch.randn(state[k].shape, generator=g)
    save_file(state, path / "model.safetensors")
    return path


def main(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def api(ckpt, path, question=None, offset=0.0, max_length=MAX_LENGTH):
    """(ids, mean log-prob per new token) from the Python API: Processor(compat="original") + the original search."""
    model, proc = git_scratch.load(ckpt), Processor.from_pretrained(ckpt, compat="original")
    batch = proc(images=[str(path)], text=question)
    ids = batch.input_ids if question is not None else None
    g = original_beam_search(model, batch.pixel_values + offset, ids, max_length=max_length)
    n, T = int(g.lengths[0]), 1 if ids is None else ids.shape[1]  # new tokens ([SEP] included), prompt
    return g.sequences[0, : T + n].tolist(), g.logprob[0].item() / n


def test_caption_is_the_original_search_on_the_original_pixels(ckpt):
    paths = [photo(p) for p in PHOTOS]
    r = run_cli("caption", *paths, "-c", ckpt, "--compat", "original", "--max-length", MAX_LENGTH, "--json",
                "--no-progress")
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    moved = []
    for rec, path in zip(recs, paths):
        ids, score = api(ckpt, path)
        assert rec["ids"] == ids and rec["score"] == pytest.approx(score, abs=SCORE_TOL), path
        assert rec["settings"]["compat"] == "original" and rec["settings"]["num_beams"] == 4
        moved.append(abs(api(ckpt, path, offset=0.05)[1] - score))
    assert max(moved) > 1e-3, "the reference does not see the pixels"
    assert len({rec["text"] for rec in recs}) > 1, "every photo got the same caption"


def test_a_long_question_is_cut_as_the_original_cuts_it(ckpt, capsys):
    """45 wordpieces: the first 40, then their last 38, after [CLS] (inference.py:92-101)."""
    words = " ".join(f"word{i}" for i in range(45))
    tok = Processor.from_pretrained(ckpt).tokenizer
    pieces = tok.encode(words)[1:]
    assert len(pieces) > 40
    rc, out, err = main(capsys, "vqa", photo("coffee.png"), "-q", words, "-c", ckpt, "--compat", "original",
                        "--max-length", 44, "--json", "--no-progress")
    assert rc == 0, err
    (rec,) = records(out)
    assert rec["ids"][:39] == [tok.cls_id] + pieces[:40][-38:]
    assert rec["ids"] == api(ckpt, photo("coffee.png"), words, max_length=44)[0]


def test_a_video_checkpoint_gives_one_image_the_first_temporal_embedding(video_ckpt, capsys):
    model = git_scratch.load(video_ckpt)
    rc, out, err = main(capsys, "caption", photo("chelsea.png"), "-c", video_ckpt, "--compat", "original",
                        "--max-length", MAX_LENGTH, "--json", "--no-progress")
    assert rc == 0, err
    (rec,) = records(out)
    px = Processor.from_pretrained(video_ckpt, compat="original")(images=[str(photo("chelsea.png"))]).pixel_values
    assert px.shape[:2] == (1, 1)  # one image, one frame: temporal embedding 0 is added
    g = original_beam_search(model, px, max_length=MAX_LENGTH)
    assert rec["ids"] == g.sequences[0, : 1 + int(g.lengths[0])].tolist()
    with torch.no_grad():  # the embedding matters: without it (4-D pixels) the image tokens differ
        assert not torch.allclose(model.encode_image(px), model.encode_image(px[:, 0]))


def test_results_made_in_one_mode_do_not_resume_the_other(ckpt, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    rc, _, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "--max-new-tokens", 4, "-o", out,
                      "--no-progress")
    assert rc == 0, err
    rc, _, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, "--compat", "original", "--max-length",
                      MAX_LENGTH, "-o", out, "--no-progress")
    assert rc == 2 and 'compat off there, "original" now' in err


@pytest.mark.parametrize("bad,message", [
    (("--compat", "original", "--max-new-tokens", "5"), "--max-new-tokens cannot be combined with --compat "
     "original, which runs the original GIT's beam search (bound the length with --max-length)"),
    (("--compat", "original", "--sample"),
     "--sample cannot be combined with --compat original, which runs the original GIT's beam search"),
    (("--compat", "original", "--stream"),
     "--stream cannot be combined with --compat original, which runs the original GIT's beam search"),
    (("--max-length", "9"),
     "--max-length is for --compat original (the original counts [CLS], question and [SEP]); use --max-new-tokens"),
    (("--compat", "original", "--max-length", "66"), "--max-length 66 cannot be reached: the model has 64 text "
     "positions (max_position_embeddings), so at most 65 tokens with the final [SEP]"),
    (("--compat", "orignal"), "argument --compat: invalid choice: 'orignal' (choose from 'transformers', 'original')"),
])
def test_what_the_original_cannot_do_is_a_usage_error(ckpt, capsys, bad, message):
    rc, _, err = main(capsys, "caption", photo("coffee.png"), "-c", ckpt, *bad)
    assert rc == 2 and err.splitlines()[-1] == f"git-scratch caption: error: {message.format(ckpt=ckpt)}"
