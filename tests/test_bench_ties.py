"""bench/ties.py: when the two sides' ids differ, a near-tie (equal exact scores) is told from a real difference."""

import pytest
import torch

from bench.ties import explain
from reference import build


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """A tiny checkpoint in which word 7 is an exact twin of the first caption word: the same embedding and
    LM-head row, on both sides. Swapping the two changes the ids but not one bit of any score."""
    r = build("tiny", tmp_path_factory.mktemp("twins"), seed=3)
    px = torch.randn(2, 3, r.ours.config.vision.image_size, r.ours.config.vision.image_size,
                     generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = int(r.ours.generate(px[:1], max_new_tokens=1)[0, -1])
        twin = 7 if first != 7 else 8
        for emb, head in ((r.ours.embed.tok_embed, r.ours.lm_head), (r.hf.git.embeddings.word_embeddings, r.hf.output)):
            emb.weight[twin] = emb.weight[first]
            head.weight[twin] = head.weight[first]
            head.bias[twin] = head.bias[first]
    return r, px, first, twin


def _explain(r, px, ours, theirs, beams):
    return explain({"ours": r.ours, "theirs": r.hf}, {"px": px}, ours, theirs, new=6, beams=beams)


def _pair(r, px):
    """Our 6 forced new tokens per image, and a copy to play transformers' side."""
    with torch.no_grad():
        ours = r.ours.generate(px, max_new_tokens=6, min_new_tokens=6)
    return ours, ours.clone()


@pytest.mark.parametrize("beams", [1, 4])
def test_identical_ids_and_a_twin_swap_are_not_differences(twins, beams):
    r, px, first, twin = twins
    ours, theirs = _pair(r, px)
    ok, detail = _explain(r, px, ours, theirs, beams)
    assert ok and "2 of 2 rows identical" in detail
    row = theirs[0]
    theirs[0] = torch.where(row == first, twin, torch.where(row == twin, first, row))  # the twins swap in row 0
    assert not torch.equal(ours, theirs)
    ok, detail = _explain(r, px, ours, theirs, beams)
    assert ok and "1 near-tie" in detail and "row 0" in detail


@pytest.mark.parametrize("beams", [1, 4])
def test_another_word_is_a_real_difference(twins, beams):
    r, px, first, twin = twins
    ours, theirs = _pair(r, px)
    theirs[1, -3] = (int(theirs[1, -3]) + 11) % r.ours.config.text.vocab_size  # a word the model did not pick
    ok, detail = _explain(r, px, ours, theirs, beams)
    assert not ok and "DIFFER in 1 of 2 rows" in detail and "row 1" in detail
