"""Hostile annotation files and images for load_dataset (issue 19): a file that cannot be read is one
ValueError or OSError naming it, a bad row is skipped and reported once, and an image the processor would
refuse (an extreme aspect ratio) is refused before anything resizes it, in bounded memory."""

import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from git_scratch.data import datasets
from git_scratch.data.datasets import load_dataset
from git_scratch.preprocessing.processor import ImageConfig, Processor

ROWS = [{"image": "a.png", "caption": "a red box"}, {"image": "b.png", "caption": "a blue box"}]


@pytest.fixture
def folder(tmp_path):
    """a.png, b.png (20x16), wide.png (60000x1: 259 bytes, 13,440,000x224 once its short side is 224)."""
    Image.new("RGB", (20, 16), "red").save(tmp_path / "a.png")
    Image.new("RGB", (20, 16), "blue").save(tmp_path / "b.png")
    Image.new("RGB", (60000, 1), "green").save(tmp_path / "wide.png")
    Image.new("RGB", (1, 60000), "green").save(tmp_path / "tall.png")
    return tmp_path


def write(path, rows: list[dict]) -> None:
    """rows as the format of path's suffix (in any case) says, UTF-8."""
    kind = path.suffix.lower()
    if kind == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == ".csv":
        path.write_text("image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows), encoding="utf-8")
    else:
        images = [{"id": i, "file_name": r["image"]} for i, r in enumerate(rows)]
        annotations = [{"image_id": i, "caption": r["caption"]} for i, r in enumerate(rows)]
        path.write_text(json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False),
                        encoding="utf-8")


# ----------------------------------------------------------------------------- images the processor refuses


@pytest.mark.parametrize("name", ["wide.png", "tall.png"])
def test_an_extreme_aspect_image_is_skipped_once_when_the_dataset_has_the_processor(folder, name, capsys):
    path = folder / "train.jsonl"
    write(path, [ROWS[0], {"image": name, "caption": "a line"}])
    data = load_dataset(path, processor=Processor())
    assert len(data) == 2 and not data.skipped  # the file exists: it is checked when read
    for _ in range(2):  # two epochs
        assert data[0] is not None and data[1] is None
    assert [s.where for s in data.skipped] == [f"{path}:2"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"skipped {path}:2: unreadable image: {folder / name}")
    assert "13440000" in err[0] and "extreme aspect ratio" in err[0]


def test_the_processors_file_budget_applies_to_dataset_images(folder, capsys):
    path = folder / "train.csv"
    write(path, ROWS)
    data = load_dataset(path, processor=Processor(max_pixels=100))  # 20x16 = 320 pixels: over
    assert data[0] is None and data[1] is None and len(data.skipped) == 2
    assert "over the budget of 100" in capsys.readouterr().err


@pytest.mark.parametrize("processor", [
    Processor(ImageConfig(do_center_crop=False)),  # transformers' recipe, its resize visible in the output
    Processor(compat="original", crop_size=224, max_size=373),  # the original's VQA resize: no crop
], ids=["transformers", "original-vqa"])
@pytest.mark.parametrize("size", [(20, 16), (16, 20), (300, 7), (7, 300)])
def test_resized_shape_is_the_size_the_processor_resizes_to(processor, size):
    # check_size refuses by this shape, so it must be the one preprocess_image makes.
    im = Image.new("RGB", size, "red")
    assert processor.preprocess_image(im).shape[1:] == processor.resized_shape(im.height, im.width)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and caps the address space (Linux)")
def test_reading_and_checking_the_extreme_aspect_file_stays_under_64_mib(folder):
    """In a fresh process: load the file with a processor, read the row, and do with what comes back what
    training's collate and evaluation's losses do (preprocess). The address space is capped at 1 GiB above
    what the imports took, so a missing check fails fast (MemoryError) instead of taking the machine.

    Bound: 64 MiB of peak-RSS growth. Decoding the 60000x1 PNG as RGB takes 180 KB and the check only
    computes a shape; the rest is room for Pillow's lazily loaded plugins and allocator noise (measured:
    under 2 MiB). Unchecked, the resize alone asks for 13,440,000x224 RGBA, 12 GB (a 6000x1 PNG already
    peaked at 3.1 GB)."""
    script = textwrap.dedent("""
        import json, resource, sys
        from git_scratch.data.datasets import load_dataset
        from git_scratch.preprocessing.pixels import preprocess
        from git_scratch.preprocessing.processor import ImageConfig, Processor

        processor = Processor()
        size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        cap = size + 2**30 if hard == resource.RLIM_INFINITY else min(size + 2**30, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        data = load_dataset(sys.argv[1], processor=processor)
        item = data[0]
        if item is not None:
            preprocess(item[0], processor.image_config)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
        print(json.dumps({"refused": item is None, "grew_kib": grew}))
    """)
    path = folder / "train.jsonl"
    write(path, [{"image": "wide.png", "caption": "a line"}])
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    assert got["refused"] and got["grew_kib"] < 64 * 1024, got


# ----------------------------------------------------------------------------- malformed COCO files


@pytest.mark.parametrize("body, says", [
    ({"images": [], "annotations": {"0": {"image_id": 0}}}, "'annotations' must be a list, is a JSON object"),
    ({"images": [], "annotations": 5}, "'annotations' must be a list, is a JSON number"),
    ({"images": {"id": 0, "file_name": "a.png"}, "annotations": []}, "'images' must be a list, is a JSON object"),
    ({"images": "a.png", "annotations": []}, "'images' must be a list, is a JSON string"),
    ({"annotations": []}, "'images' must be a list, is missing"),
    ([{"image": "a.png", "caption": "x"}], "a JSON array, not an object"),
    (3, "a JSON number, not an object"),
])
def test_a_coco_file_of_the_wrong_shape_is_one_value_error_naming_it(folder, body, says):
    path = folder / "captions.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError) as e:
        load_dataset(path)
    assert str(e.value).startswith(f"{path}: not a COCO captions file") and says in str(e.value)


@pytest.mark.parametrize("text, says", [("{not json", "not valid JSON"), ("[" * 100_000, "nested too deeply")])
def test_a_coco_file_that_is_not_json_is_one_value_error_naming_it(folder, text, says):
    path = folder / "captions.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=says) as e:
        load_dataset(path)
    assert str(e.value).startswith(f"{path}: ")


def test_coco_rows_with_an_unusable_image_id_or_image_entry_are_skipped_with_a_reason(folder, capsys):
    path = folder / "captions.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": [2], "file_name": "b.png"}, {"id": 3}, "c.png"],
        "annotations": [{"image_id": 1, "caption": "red"}, {"image_id": [1], "caption": "a list"},
                        {"image_id": {"id": 1}, "caption": "an object"}, {"image_id": None, "caption": "null"},
                        {"caption": "none"}, 7, {"image_id": 2, "caption": "its image entry was bad"}],
    }))
    data = load_dataset(path)
    assert [(r.image.name, r.target) for r in data.records] == [("a.png", "red")]
    assert {s.where: s.reason for s in data.skipped} == {
        f"{path}:images[1]": "not an object with an 'id' (number or text) and a 'file_name'",
        f"{path}:images[2]": "not an object with an 'id' (number or text) and a 'file_name'",
        f"{path}:images[3]": "not an object with an 'id' (number or text) and a 'file_name'",
        f"{path}:annotations[1]": "image_id is a JSON array, not a number or text",
        f"{path}:annotations[2]": "image_id is a JSON object, not a number or text",
        f"{path}:annotations[3]": "image_id is a JSON null, not a number or text",
        f"{path}:annotations[4]": "no image_id",
        f"{path}:annotations[5]": "not an object",
        f"{path}:annotations[6]": "image_id not among the file's images",
    }
    assert len(capsys.readouterr().err.splitlines()) == 9  # each once


# ----------------------------------------------------------------------------- malformed JSONL and CSV rows


def test_jsonl_rows_that_python_cannot_use_are_skipped_not_raised(folder, capsys):
    path = folder / "train.jsonl"
    lines = [
        json.dumps(ROWS[0]),
        '{"image": "a.png", "caption": "x", "n": ' + "1" * 5000 + "}",  # int over Python's 4300 digits: ValueError
        "[" * 100_000,  # RecursionError in json
        '{"image": "a.png", "caption": "\\ud800"}',  # a lone surrogate: the tokenizer's TypeError
        json.dumps({"image": "a\0.png", "caption": "a NUL in the name"}),
        json.dumps({"image": "x" * 300 + ".png", "caption": "a name too long (ENAMETOOLONG)"}),
        '{"image": "a.png", "caption": NaN}',
    ]
    path.write_text("\n".join(lines) + "\n")
    data = load_dataset(path)
    assert len(data) == 1
    reasons = {s.where: s.reason for s in data.skipped}
    assert list(reasons) == [f"{path}:{n}" for n in range(2, 8)]
    assert reasons[f"{path}:2"].startswith("not valid JSON (Exceeds the limit")
    assert reasons[f"{path}:3"] == "not valid JSON (nested too deeply)"
    assert reasons[f"{path}:4"] == "caption not valid Unicode (a lone surrogate escape)"
    assert reasons[f"{path}:5"].startswith("no image file")
    assert reasons[f"{path}:6"].startswith("no usable image file") and "too long" in reasons[f"{path}:6"]
    assert reasons[f"{path}:7"] == "missing or empty caption"
    assert len(capsys.readouterr().err.splitlines()) == 6


def test_a_csv_cell_over_the_field_limit_skips_its_row_with_its_line(folder):
    path = folder / "train.csv"
    path.write_text(f"image,caption\na.png,ok\na.png,{'y' * 200_000}\nb.png,fine\n")
    data = load_dataset(path)
    assert [r.target for r in data.records] == ["ok", "fine"]
    assert [(s.where, s.reason) for s in data.skipped] == [
        (f"{path}:3", "not valid CSV (field larger than field limit (131072))")]


def test_a_csv_header_over_the_field_limit_is_one_value_error_naming_the_file(folder):
    path = folder / "train.csv"
    path.write_text(f"image,{'c' * 200_000}\na.png,x\n")
    with pytest.raises(ValueError, match="the header row is not valid CSV") as e:
        load_dataset(path)
    assert str(e.value).startswith(f"{path}: ")


# ----------------------------------------------------------------------------- encodings and names


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_a_latin1_file_is_a_value_error_naming_the_file_byte_and_offset(folder, suffix):
    path = folder / f"train{suffix}"
    write(path, [ROWS[0], {"image": "b.png", "caption": "café"}])
    data = path.read_text(encoding="utf-8").encode("latin-1")
    path.write_bytes(data)
    at = data.index("é".encode("latin-1"))
    with pytest.raises(ValueError) as e:
        load_dataset(path)
    assert str(e.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset {at}); save it as UTF-8"


def test_the_offset_of_a_bad_byte_counts_from_the_file_start_across_read_chunks(folder):
    # The byte follows a character begun 1 MiB in, at the end of the first chunk not_utf8 reads.
    path = folder / "train.jsonl"
    path.write_bytes(b" " * (2**20 - 2) + "€".encode() + b"\xff\n")
    with pytest.raises(ValueError, match=f"byte 0xff at offset {2**20 + 1}\\)"):
        load_dataset(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_a_file_with_a_byte_order_mark_reads_every_row(folder, suffix):
    path = folder / f"train{suffix}"
    write(path, ROWS)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = load_dataset(path)
    assert [r.target for r in data.records] == ["a red box", "a blue box"] and not data.skipped


@pytest.mark.parametrize("name", ["TRAIN.JSONL", "train.CSV", "captions.Json"])
def test_suffixes_in_capitals_read_every_row(folder, name):
    path = folder / name
    write(path, ROWS)
    data = load_dataset(path)
    assert [r.target for r in data.records] == ["a red box", "a blue box"] and not data.skipped


# ----------------------------------------------------------------------------- reporting


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_report_false_prints_no_skip_line_but_counts_it(folder, suffix, capsys):
    path = folder / f"train{suffix}"
    write(path, [ROWS[0], {"image": "missing.png", "caption": "gone"}])
    quiet = load_dataset(path, report=False)
    assert capsys.readouterr().err == ""
    loud = load_dataset(path)
    assert len(quiet) == len(loud) == 1
    assert quiet.skipped == loud.skipped and len(quiet.skipped) == 1
    assert capsys.readouterr().err.count("skipped ") == 1


def test_report_false_still_reports_images_that_fail_when_read(folder, capsys):
    # Under torchrun each rank reads only its own images: a rank that kept quiet would lose the line.
    (folder / "empty.png").write_bytes(b"")
    path = folder / "train.jsonl"
    write(path, [{"image": "empty.png", "caption": "nothing"}])
    data = load_dataset(path, report=False)
    assert data[0] is None
    assert capsys.readouterr().err.startswith(f"skipped {path}:1: unreadable image")


# ----------------------------------------------------------------------------- empty, missing, stopped


@pytest.mark.parametrize("name, text", [
    ("train.jsonl", ""), ("train.csv", ""), ("captions.json", ""), ("train.jsonl", "\ufeff\n\n"),
    ("train.csv", "image,caption\n"), ("captions.json", '{"images": [], "annotations": []}'),
    ("train.jsonl", "{bad\n[]\n"), ("train.csv", "image,caption\nmissing.png,x\n"),
])
def test_an_empty_or_all_bad_file_is_a_dataset_of_length_zero(folder, name, text):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    data = load_dataset(path)
    assert len(data) == 0 and data.summary().startswith(f"{path}: 0 rows")


def test_a_missing_file_is_an_oserror_naming_it(folder):
    with pytest.raises(FileNotFoundError, match=f"^{folder / 'nope.jsonl'}: no such annotation file$"):
        load_dataset(folder / "nope.jsonl")


def test_a_folder_given_as_the_annotation_file_is_an_oserror_naming_it(folder):
    (folder / "data.csv").mkdir()
    with pytest.raises(IsADirectoryError, match=f"^{folder / 'data.csv'}: a folder, not an annotation file$"):
        load_dataset(folder / "data.csv")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_ctrl_c_while_reading_the_file_is_not_swallowed(folder, suffix, monkeypatch):
    path = folder / f"train{suffix}"
    write(path, ROWS)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "_record", interrupt)  # every format makes its records here
    with pytest.raises(KeyboardInterrupt):
        load_dataset(path)


def test_ctrl_c_while_reading_an_image_is_not_swallowed(folder, monkeypatch):
    path = folder / "train.jsonl"
    write(path, ROWS)
    data = load_dataset(path, processor=Processor())

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "as_pil", interrupt)
    with pytest.raises(KeyboardInterrupt):
        data[0]
    assert not data.skipped
