"""Datasets on disk: JSONL, CSV and COCO captions; every bad row or image reported once and counted."""

import json

import pytest
from PIL import Image

from git_scratch.data import shapes
from git_scratch.data.datasets import ShapesDataset, load_dataset


@pytest.fixture
def folder(tmp_path):
    """Two good images, one zero-byte file and one truncated PNG."""
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (20, 16), colour).save(tmp_path / name)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:40])
    return tmp_path


def test_jsonl_rows_captions_and_questions(folder):
    path = folder / "train.jsonl"
    path.write_text(json.dumps({"image": "a.png", "caption": "a red box"}) + "\n\n"
                    + json.dumps({"image": "b.png", "question": "what colour?", "answer": "blue"}) + "\n")
    ds = load_dataset(path)
    assert len(ds) == 2 and not ds.skipped
    image, prompt, target = ds[0]
    assert (image.size, image.mode, prompt, target) == ((20, 16), "RGB", "", "a red box")
    assert ds[1][1:] == ("what colour?", "blue")


def test_bad_jsonl_rows_are_reported_with_line_and_skipped(folder, capsys):
    path = folder / "train.jsonl"
    path.write_text("\n".join([
        json.dumps({"image": "a.png", "caption": "ok"}),  # line 1
        "{not json",  # line 2
        json.dumps({"image": "a.png"}),  # line 3: no caption
        json.dumps({"image": "missing.png", "caption": "x"}),  # line 4
        json.dumps(["a list"]),  # line 5
        json.dumps({"image": "b.png", "question": "q?", "answer": ""}),  # line 6: empty answer
    ]) + "\n")
    ds = load_dataset(path)
    assert len(ds) == 1
    assert [s.where for s in ds.skipped] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5
    assert err[0].startswith(f"skipped {path}:2: not valid JSON")
    assert "no image file" in err[2] and "missing.png" in err[2]
    assert "answer" in err[4]
    assert ds.summary().endswith("1 rows, 5 skipped")


def test_unreadable_images_are_reported_once_and_give_none(folder, capsys):
    path = folder / "train.csv"
    path.write_text("image,caption\na.png,red\nempty.png,nothing\ncut.png,\"cut, short\"\n")
    ds = load_dataset(path)
    assert len(ds) == 3 and not ds.skipped  # files exist: decoding is checked when read
    for _ in range(2):  # two epochs
        got = [ds[i] for i in range(3)]
        assert got[0] is not None and got[1] is None and got[2] is None
    assert [s.where for s in ds.skipped] == [f"{path}:3", f"{path}:4"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2  # once each, not once per epoch
    assert "empty.png" in err[0] and "cut.png" in err[1]


def test_csv_rows_with_wrong_cell_counts_are_reported(folder, capsys):
    path = folder / "train.csv"
    path.write_text("image,question,answer\na.png,what?,red\nb.png,only two\nb.png,\"multi\nline?\",blue\n"
                    "a.png,a,b,extra\n")
    ds = load_dataset(path)
    assert [(r.prompt, r.target) for r in ds.records] == [("what?", "red"), ("multi\nline?", "blue")]
    # csv line numbers are where the row ends: the quoted field spans lines 4-5, the extra-cell row is 6
    assert [s.where for s in ds.skipped] == [f"{path}:3", f"{path}:6"]


def test_csv_without_image_column_is_an_error(folder):
    path = folder / "train.csv"
    path.write_text("file,caption\na.png,x\n")
    with pytest.raises(ValueError, match="image"):
        load_dataset(path)


def test_coco_captions_with_images_folder(folder, tmp_path_factory, capsys):
    ann = tmp_path_factory.mktemp("ann") / "captions_train.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"image_id": 1, "caption": "red"}, {"image_id": 2, "caption": "blue"},
                        {"image_id": 1, "caption": "a red thing"}, {"image_id": 9, "caption": "lost"}],
    }))
    ds = load_dataset(ann, images=folder)
    assert [(r.image.name, r.target) for r in ds.records] == [("a.png", "red"), ("b.png", "blue"),
                                                              ("a.png", "a red thing")]
    assert [s.where for s in ds.skipped] == [f"{ann}:annotations[3]"]
    assert "annotations[3]" in capsys.readouterr().err


def test_unknown_extension_is_an_error(folder):
    with pytest.raises(ValueError, match="unknown annotation format"):
        load_dataset(folder / "train.txt")


def test_shapes_dataset_gives_captions_and_questions():
    both = ShapesDataset(4, "both")
    image, prompt, target = both[0]
    assert image.size == (96, 96) and prompt == "" and " " in target
    assert both[1][1].endswith("?")
    assert ShapesDataset(4, "caption", offset=10)[0][2] == ShapesDataset(20)[10][2]


def test_shapes_both_asks_every_kind_of_question_about_every_number_of_shapes():
    """'both' asks on odd items only; the question must not follow the item's parity (an index of
    (offset + i) % len(qa) never asked "how many shapes" about one shape)."""
    data = ShapesDataset(3000, "both")
    asked = set()
    for i in range(1, len(data), 2):
        seed, question, _ = data.describe(i)
        # "is there an orange ...": the article follows the colour, the question kind is the same
        asked.add((len(shapes.scene(seed)), " ".join(question.replace("there an ", "there a ").split()[:3])))
    kinds = {"how many shapes", "what color is", "what size is", "what is left", "what shape is", "is there a"}
    assert asked == {(n, k) for n in (1, 2, 3) for k in kinds}


def test_a_focus_question_is_asked_as_often_as_asked_for():
    """--shapes-focus: half the question examples ask "what is left of ..." where the image has one (about
    9% of questions without it); the other half, and the captions, are drawn as before."""
    def share(data):
        questions = [data.describe(i)[1] for i in range(1, len(data), 2)]
        return sum(q.startswith("what is left of") for q in questions) / len(questions)

    plain, focused = ShapesDataset(4000, "both"), ShapesDataset(4000, "both", focus="what is left of", focus_share=0.5)
    # Images with no kind named once have no such question: about 10% of scenes. Expected shares: plain
    # ~0.16 (one of ~6 questions); focused ~0.5 * 0.9 + 0.5 * 0.16 = 0.53. 2,000 draws: sd ~0.011.
    assert 0.12 < share(plain) < 0.20 and 0.47 < share(focused) < 0.60
    assert all(plain[i][2] == focused[i][2] for i in range(0, 40, 2))  # captions untouched
    idle = ShapesDataset(4000, "both", focus="what is left of")  # no share: every draw as without a focus
    assert all(idle.describe(i) == plain.describe(i) for i in range(40))
    with pytest.raises(ValueError, match="focus_share must be in"):
        ShapesDataset(4, "both", focus_share=0.5)
