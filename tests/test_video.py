"""git_scratch.video: which frames a GIT video checkpoint sees, from each kind of source.

Frames are identified by content: each generated frame is a flat grey whose level encodes its
index, so a test can read back which frame was picked. Exact equality everywhere except the
mp4, whose lossy codec moves flat greys by a few levels (tolerance at that test).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from git_scratch.preprocessing.processor import ImageLoadError, Processor, to_rgb
from git_scratch.preprocessing.video import natural_key, sample_frames, sample_indices

STEP = 8  # grey level per frame index: frame i is flat grey 8 * (i + 1)


def grey(i: int, size=(32, 24)) -> Image.Image:
    return Image.new("RGB", size, (STEP * (i + 1),) * 3)


def index_of(frame: Image.Image) -> int:
    return round(np.asarray(frame, dtype=np.float64).mean() / STEP) - 1


@pytest.fixture(scope="module")
def gif() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None:
        pytest.skip("scikit-image not installed (pip install scikit-image)")
    return Path(spec.submodule_search_locations[0]) / "data" / "no_time_for_that_tiny.gif"


def test_indices_are_segment_middles_evenly_spaced():
    assert sample_indices(24, 6) == [2, 6, 10, 14, 18, 22]  # spacing N / n = 4, centred
    assert sample_indices(10, 1) == [5]
    assert sample_indices(7, 7) == list(range(7))  # asking for all frames gives all frames
    idx = sample_indices(1000, 6)
    assert np.ptp(np.diff(idx)) <= 1  # even spacing up to integer rounding


def test_fewer_frames_than_asked_repeats_frames_in_time_order():
    assert sample_indices(3, 6) == [0, 0, 1, 1, 2, 2]
    assert sample_indices(1, 4) == [0, 0, 0, 0]


def test_zero_frames_or_zero_asked_is_an_error():
    with pytest.raises(ValueError, match="no frames"):
        sample_indices(0, 6)
    with pytest.raises(ValueError, match="asked for 0 frames"):
        sample_indices(5, 0)


def test_folder_frames_are_read_in_natural_name_order(tmp_path):
    for i in range(12):
        grey(i).save(tmp_path / f"frame{i + 1}.png")  # frame1 .. frame12: plain sorting puts frame10 second
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".hidden.png").write_bytes(b"")  # hidden files are skipped, even broken ones
    frames = sample_frames(tmp_path, 6)
    assert [index_of(f) for f in frames] == sample_indices(12, 6) == [1, 3, 5, 7, 9, 11]
    assert all(f.mode == "RGB" for f in frames)
    assert sorted(["f10", "f2", "F1"], key=natural_key) == ["F1", "f2", "f10"]


def test_list_of_paths_keeps_the_given_order(tmp_path):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        grey(i).save(paths[-1])
    frames = sample_frames(paths[::-1], 5)
    assert [index_of(f) for f in frames] == [4, 3, 2, 1, 0]


def test_animated_gif_gives_the_evenly_spaced_frames(gif):
    frames = sample_frames(gif, 6)
    assert len(frames) == 6 and all(f.mode == "RGB" and f.size == (14, 25) for f in frames)
    with Image.open(gif) as im:
        assert im.n_frames == 24
        expected = []
        for i in sample_indices(24, 6):
            im.seek(i)
            expected.append(np.asarray(to_rgb(im)))
    assert all(np.array_equal(np.asarray(f), e) for f, e in zip(frames, expected))
    assert Processor().preprocess_frames(frames).shape == (1, 6, 3, 224, 224)


def test_multipage_tiff_with_fewer_pages_repeats_them(gif):
    tif = gif.parent / "multipage.tif"  # 2 pages
    frames = sample_frames(tif, 6)
    with Image.open(tif) as im:
        pages = []
        for i in range(2):
            im.seek(i)
            pages.append(np.asarray(im.convert("RGB")))
    assert [next(i for i, p in enumerate(pages) if np.array_equal(np.asarray(f), p)) for f in frames] == [0, 0, 0, 1, 1, 1]


def test_mp4_written_with_pyav_gives_the_evenly_spaced_frames(tmp_path):
    av = pytest.importorskip("av", reason="PyAV not installed (pip install av)")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            out.mux(stream.encode(av.VideoFrame.from_image(grey(i, (64, 48)))))
        out.mux(stream.encode())  # flush the encoder
    frames = sample_frames(path, 6)
    assert len(frames) == 6 and all(f.mode == "RGB" and f.size == (64, 48) for f in frames)
    # A lossy codec shifts a flat grey by a few levels; frames are STEP = 8 levels apart, so
    # rounding mean / 8 still names the frame unambiguously.
    assert [index_of(f) for f in frames] == sample_indices(30, 6) == [2, 7, 12, 17, 22, 27]


def test_missing_pyav_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 64)
    with pytest.raises(ImportError, match="pip install av"):
        sample_frames(clip, 6)


def test_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(ValueError, match=str(tmp_path)):
        sample_frames(tmp_path, 6)
    with pytest.raises(ValueError, match="empty"):
        sample_frames([], 6)


def test_broken_sampled_frame_is_reported_with_its_path(tmp_path):
    for i in range(4):
        grey(i).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"")  # index 1 is sampled when asking 2 of 4
    with pytest.raises(ImageLoadError, match="1.png: empty file"):
        sample_frames(tmp_path, 2)


def test_truncated_gif_is_reported_with_its_path(tmp_path, gif):
    cut = tmp_path / "cut.gif"
    cut.write_bytes(gif.read_bytes()[:1300])  # the header and a few frames of 24
    with pytest.raises(ImageLoadError, match="cut.gif: truncated or corrupt"):
        sample_frames(cut, 6)


def test_unreadable_video_and_missing_file_are_reported(tmp_path):
    pytest.importorskip("av", reason="PyAV not installed (pip install av)")
    bad = tmp_path / "fake.mp4"
    bad.write_text("not a video")
    with pytest.raises(ImageLoadError, match="fake.mp4: not a video"):
        sample_frames(bad, 6)
    with pytest.raises(ImageLoadError, match="no such file"):
        sample_frames(tmp_path / "gone.mp4", 6)
