"""The built-in shapes task: deterministic, captions and answers true of the pixels, vocabulary complete.

The checks read the drawn image itself (pixel colours at probe points), not the drawing code's own
bookkeeping, so a caption that names the wrong colour, kind, size or order fails."""

import numpy as np
import pytest

from git_scratch import GitConfig
from git_scratch.data import shapes
from git_scratch.preprocessing.tokenizer import Tokenizer

SEEDS = range(60)


def test_same_seed_same_sample_and_different_seeds_differ():
    im1, cap1, qa1 = shapes.sample(7)
    im2, cap2, qa2 = shapes.sample(7)
    assert (cap1, qa1) == (cap2, qa2)
    assert np.array_equal(np.asarray(im1), np.asarray(im2))
    assert len({shapes.sample(s)[1] for s in SEEDS}) > 40  # captions vary with the seed


def colour_at(a: np.ndarray, x: float, y: float) -> str | None:
    """The shape colour name of pixel (x, y), or None for background."""
    px = tuple(int(v) for v in a[int(y), int(x)])
    return next((name for name, rgb in shapes.COLORS.items() if px == rgb), None)


def kind_seen(a: np.ndarray, sh: shapes.Shape) -> str:
    """Classify the drawn shape by probes at fractions of its box (0 = left/top edge, 1 = right/bottom)."""
    s = sh.side

    def on(fx, fy):
        return colour_at(a, sh.x + fx * (s - 1), sh.y + fy * (s - 1)) == sh.color

    corners_top = on(0.1, 0.1) and on(0.9, 0.1)
    corners_bottom = on(0.1, 0.9) and on(0.9, 0.9)
    if corners_top and corners_bottom:
        return "square"
    if corners_bottom and not (on(0.1, 0.1) or on(0.9, 0.1)):
        return "triangle"
    if on(0.2, 0.2) and on(0.8, 0.8):  # the circle reaches its diagonals at 0.15 in; the cross's arms do not
        return "circle"
    if on(0.5, 0.05) and on(0.05, 0.5) and not on(0.2, 0.2):
        return "cross"
    return "unknown"


def width_seen(a: np.ndarray, sh: shapes.Shape) -> int:
    """Pixels of the shape's colour along the row through its centre (every kind spans its box there,
    except the triangle, which spans about half of it at mid-height)."""
    row = int(sh.centre[1]) if sh.kind != "triangle" else sh.y + sh.side - 1
    return sum(colour_at(a, x, row) == sh.color for x in range(sh.x, sh.x + sh.side))


@pytest.mark.parametrize("seed", SEEDS)
def test_caption_names_every_drawn_shape_left_to_right(seed):
    im, caption, _ = shapes.sample(seed)
    drawn = shapes.scene(seed)
    a = np.asarray(im)
    assert im.size == (shapes.SIZE, shapes.SIZE)
    parsed = shapes.parse_caption(caption)
    assert len(parsed) == len(drawn)
    xs = [sh.centre[0] for sh in drawn]
    assert xs == sorted(xs) and min(np.diff(xs), default=shapes.MIN_GAP) >= shapes.MIN_GAP
    for (size, colour, kind), sh in zip(parsed, drawn):
        # inside the margin that the training crop never cuts (training/feed.py random_resized_crop)
        assert shapes.MARGIN <= min(sh.x, sh.y) and max(sh.x, sh.y) + sh.side <= shapes.SIZE - shapes.MARGIN
        assert colour_at(a, *sh.centre if kind != "triangle" else (sh.centre[0], sh.y + 0.75 * sh.side)) == colour
        assert kind_seen(a, sh) == kind
        assert width_seen(a, sh) == shapes.SIZES[size]
    # nothing else is drawn: every shape-coloured pixel lies in some shape's box
    boxes = np.zeros(a.shape[:2], bool)
    for sh in drawn:
        boxes[sh.y: sh.y + sh.side, sh.x: sh.x + sh.side] = True
    coloured = np.zeros(a.shape[:2], bool)
    for rgb in shapes.COLORS.values():
        coloured |= (a == rgb).all(-1)
    assert not (coloured & ~boxes).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_answers_are_true_of_the_caption(seed):
    _, caption, qa = shapes.sample(seed)
    objs = shapes.parse_caption(caption)  # checked against the pixels above
    for q, answer in qa:
        words = q.rstrip("?").split()
        if q.startswith("how many"):
            assert answer == shapes.NUMBERS[len(objs)]
        elif q.startswith("what color is the"):
            assert [c for _, c, k in objs if k == words[-1]] == [answer]
        elif q.startswith("what size is the"):
            assert [s for s, _, k in objs if k == words[-1]] == [answer]
        elif q.startswith("what is left of the"):
            (i,) = [i for i, (_, _, k) in enumerate(objs) if k == words[-1]]
            assert answer == ("nothing" if i == 0 else " ".join(objs[i - 1][1:]))
        elif q.startswith("what shape is"):
            assert [k for _, c, k in objs if c == words[-1]] == [answer]
        elif q.startswith("is there a"):
            assert answer == ("yes" if tuple(words[-2:]) in {(c, k) for _, c, k in objs} else "no")
        else:
            pytest.fail(f"untested question form: {q}")


def test_yes_and_no_are_both_common():
    answers = [a for s in range(200) for q, a in shapes.sample(s)[2] if q.startswith("is there")]
    # half the questions ask about a drawn shape, the rest about a random one (sometimes drawn too): about
    # 55% yes; over 200 questions one standard deviation is 3.5%, so 0.3-0.7 fails only if the split breaks
    assert 0.3 < answers.count("yes") / len(answers) < 0.7


def test_vocab_covers_every_caption_question_and_answer_without_unk():
    tok = Tokenizer.from_pretrained(shapes.VOCAB_DIR)
    for s in range(200):
        _, caption, qa = shapes.sample(s)
        for text in [caption] + [t for pair in qa for t in pair]:
            ids = tok.encode(text)
            assert tok.unk_id not in ids
            assert tok.decode(ids) == text  # lower-case words and "?" round-trip exactly


def test_vocab_matches_the_shapes_tiny_preset():
    tok = Tokenizer.from_pretrained(shapes.VOCAB_DIR)
    text = GitConfig.preset("shapes-tiny").text
    assert tok.vocab_size == text.vocab_size
    assert (tok.pad_id, tok.cls_id, tok.sep_id) == (text.pad_id, text.bos_id, text.eos_id)


def test_committed_vocab_is_what_write_vocab_builds(tmp_path):
    shapes.write_vocab(tmp_path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (shapes.VOCAB_DIR / name).read_bytes(), name


def test_processor_gives_the_preset_input_size():
    im, caption, _ = shapes.sample(0)
    batch = shapes.processor()(images=im, text=caption)
    size = GitConfig.preset("shapes-tiny").vision.image_size
    assert batch["pixel_values"].shape == (1, 3, size, size)
    assert batch["input_ids"][0, 0].item() == GitConfig.preset("shapes-tiny").text.bos_id
