"""`git-scratch serve`: the records the command line prints, over HTTP, batched, and safe from its clients.

The server runs as users run it: the console script in a subprocess on a free port, serving the shipped demo
model (real words, answers that are right), one server for the module. What is checked:
  * each record is `caption --json` / `vqa --json`'s for the same file, id for id (input: the upload's name,
    file: the digest of its bytes);
  * a result never depends on its batch: concurrent requests, batched together, give what each gives alone and
    what the command line gives; in-process, a mixed batch of jobs equals each job alone, each image encoded once;
  * hostile uploads and bad requests are a 4xx with one JSON `error` (an image's, the command line's reason), and
    the server keeps serving; bodies over the limit get 413 before they are read (with and without
    Content-Length); a full queue is a 503 with Retry-After; SIGTERM answers the requests in flight, then exits.

Scores: float32 means of log-probabilities. A batch's matrix products may round differently from one row's in
the last bits (measured on the demo model, 32 images, greedy and 16 beams: <= 5e-8), so scores are compared within
SCORE_TOL = 1e-5, 200x that, while another token or image moves a score by 1e-4 or more (test_cli.py). Ids and
text are compared exactly.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from _cli_helpers import in_process, one_error, records
from _serve_helpers import DEMO, Server, error, shape_png

SCORE_TOL = 1e-5  # see the module docstring
QUESTIONS = ["how many shapes are there?", "what color is the circle?", "what is left of the square?"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("shapes")
    return [shape_png(d, i) for i in range(8)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server("--max-batch", 8, "--max-wait-ms", 50, "--max-upload-mb", 1,
               log=tmp_path_factory.mktemp("server") / "access.log")
    yield s
    s.stop()


def upload(path: Path, name: str | None = None, data: bytes | None = None):
    return "image", (name or path.name, path.read_bytes() if data is None else data, "image/png")


def post(server, endpoint: str, files, **fields) -> httpx.Response:
    return httpx.post(server.url + endpoint, files=files, data=fields, timeout=120)


def cli(capsys, *args) -> list[dict]:
    """The records `git-scratch ARGS --json` prints (run in this process, on the demo model)."""
    rc, out, err = in_process(capsys, *args, "-c", DEMO, "--json", "--no-progress")
    return records(out)


def same_record(served: dict, printed: dict, path: Path) -> None:
    """A served record is the command line's, but for input (the upload's name) and file (its digest)."""
    assert served["input"] == path.name
    assert served["file"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(served) == list(printed)  # the same keys, in the same order
    for key in set(printed) - {"input", "file", "score"}:
        assert served[key] == printed[key], key
    if "score" in printed:
        assert abs(served["score"] - printed["score"]) <= SCORE_TOL * max(1, abs(printed["score"]))


# ---------------------------------------------------------------- the records
def test_captions_and_answers_are_the_command_lines_records(server, images, capsys):
    paths = images[:3]
    served = post(server, "/v1/caption", [upload(p) for p in paths]).json()["results"]
    for rec, printed, p in zip(served, cli(capsys, "caption", *paths), paths, strict=True):
        same_record(rec, printed, p)
    assert served[0]["text"].startswith("a ")  # the demo model's words, not noise

    served = post(server, "/v1/vqa", [upload(images[0])], question=QUESTIONS).json()["results"]
    printed = cli(capsys, "vqa", images[0], *[a for q in QUESTIONS for a in ("-q", q)])
    for rec, want in zip(served, printed, strict=True):
        same_record(rec, want, images[0])

    served = post(server, "/v1/caption", [upload(images[3])], num_beams=3, max_new_tokens=8).json()["results"]
    (printed,) = cli(capsys, "caption", images[3], "--num-beams", "3", "--max-new-tokens", "8")
    same_record(served[0], printed, images[3])
    assert served[0]["settings"]["num_beams"] == 3


def test_a_result_never_depends_on_its_batch(server, images, capsys):
    """The same requests one at a time, then all at once (batched together, options mixed): the same records."""
    asks = [("/v1/caption", [upload(p)], {}) for p in images[:4]]
    asks += [("/v1/caption", [upload(p)], {"num_beams": "2"}) for p in images[4:6]]
    asks += [("/v1/vqa", [upload(p)], {"question": QUESTIONS[:2]}) for p in images[6:8]]
    asks += [("/v1/caption", [upload(p) for p in images[:3]], {})]
    alone = [post(server, *a[:2], **a[2]).json()["results"] for a in asks]

    before = httpx.get(server.url + "/health").json()["batches"]
    together: list = [None] * len(asks)
    start = threading.Barrier(len(asks))

    def ask(i):
        start.wait()
        together[i] = post(server, *asks[i][:2], **asks[i][2]).json()["results"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = httpx.get(server.url + "/health").json()["batches"] - before
    assert batches < len(asks)  # some requests shared a batch (else this test would show nothing)
    for one, many in zip(alone, together, strict=True):
        for a, b in zip(one, many, strict=True):
            assert (a["text"], a["ids"], a["settings"]) == (b["text"], b["ids"], b["settings"])
            assert abs(a["score"] - b["score"]) <= SCORE_TOL * max(1, abs(a["score"]))
    # and what the batched requests got is what the command line prints
    printed = cli(capsys, "caption", *images[:4]) + cli(capsys, "caption", *images[4:6], "--num-beams", "2")
    for rec, want, p in zip([r for rs in together[:6] for r in rs], printed, images[:6], strict=True):
        same_record(rec, want, p)


def test_a_mixed_batch_equals_each_job_alone_and_encodes_each_image_once(images, monkeypatch):
    """In-process: run_jobs over captions, questions and two decodings at once, against each job alone.
    Each image goes through the vision encoder once, and through the decoder once per decoding it is asked
    with: an image's questions share its keys/values."""
    from git_scratch.generation.decoders import Cached
    from git_scratch.load import load
    from git_scratch.preprocessing.processor import Processor
    from git_scratch.serve.batcher import Decoding, Job, Row, run_jobs

    model, proc = load(DEMO), Processor.from_pretrained(DEMO)
    tok = proc.tokenizer
    px = [proc(images=[p]).pixel_values[0] for p in images]
    question = [proc.encode_text(q)[0][0].tolist() for q in QUESTIONS]

    def jobs():
        return [Job(px[:3], [Row(k, [tok.cls_id], None) for k in range(3)], Decoding()),
                Job(px[3:4], [Row(0, p, q) for p, q in zip(question, QUESTIONS)], Decoding()),
                Job(px[4:6], [Row(k, [tok.cls_id], None) for k in range(2)], Decoding(12, 3)),
                Job(px[6:7], [Row(0, question[1], QUESTIONS[1])], Decoding(12, 3))]

    encoded, prefilled = [], []
    real = model.encode_image
    model.encode_image = lambda pixels: encoded.append(len(pixels)) or real(pixels)
    real_prefill = Cached.prefill_image
    monkeypatch.setattr(Cached, "prefill_image", lambda self: prefilled.append(len(self.image)) or real_prefill(self))
    together = run_jobs(model, tok, jobs(), max_batch=16)
    assert encoded == [7]  # one call, each of the 7 images once, for 9 + len(QUESTIONS) rows over two decodings
    # through the decoder, one call per Decoding: the 3 captions' images with the questions' one image (once for
    # all its questions), then under Decoding(12, 3) the 3 images of its 2 captions and 1 question
    assert sorted(prefilled) == [3, 4] and len(QUESTIONS) > 1
    alone = [run_jobs(model, tok, [job], max_batch=1)[0] for job in jobs()]
    assert sum(encoded) == 14
    for one, many in zip(alone, together, strict=True):
        for a, b in zip(one, many, strict=True):
            assert (a["question"], a["ids"], a["text"]) == (b["question"], b["ids"], b["text"])
            assert abs(a["score"] - b["score"]) <= SCORE_TOL * max(1, abs(a["score"]))


def test_in_bfloat16_vision_a_batch_gives_each_caption_its_alone_record_and_the_command_lines(images, capsys):
    """--dtype bfloat16-vision: the vision encoder in bfloat16 one image a call, the decoder in float32, so a batch
    keeps what float32 keeps: each caption is its image's alone and the command line's (its batches of 8)."""
    from git_scratch.constants import BF16_VISION
    from git_scratch.load import load
    from git_scratch.preprocessing.processor import Processor
    from git_scratch.serve.batcher import Decoding, Job, Row, run_jobs

    model, proc = load(DEMO, dtype=BF16_VISION), Processor.from_pretrained(DEMO)
    tok = proc.tokenizer

    def jobs():
        return [Job([proc(images=[p]).pixel_values[0]], [Row(0, [tok.cls_id], None)], Decoding()) for p in images]

    together = [recs[0] for recs in run_jobs(model, tok, jobs(), max_batch=8)]
    alone = [run_jobs(model, tok, [job], max_batch=1)[0][0] for job in jobs()]
    printed = cli(capsys, "caption", *images, "--dtype", BF16_VISION)
    assert {rec["settings"]["dtype"] for rec in printed} == {BF16_VISION}
    for one, many, want in zip(alone, together, printed, strict=True):
        assert one["ids"] == many["ids"] == want["ids"] and one["text"] == many["text"] == want["text"]
        for score in (many["score"], want["score"]):  # the vision features are equal bit for bit; the float32
            # projection and decoder round as in float32, so the module's SCORE_TOL holds
            assert abs(one["score"] - score) <= SCORE_TOL * max(1, abs(one["score"]))


@pytest.mark.parametrize("max_batch", [1, 2, 3, 4, 8])
def test_calls_cover_every_row_once_image_major_each_image_whole(max_batch):
    """batcher.calls, on images with 1 to 5 rows: what generate needs of a call (each image's rows together,
    image after image, prompts_per_image counting them), at most max_batch rows, every row in exactly one call,
    and no more calls than whole images packed in arrival order need."""
    from git_scratch.serve.batcher import calls

    counts = [1, 3, 1, 2, 5, 1, 2, 3]  # rows of image i, their arrival interleaved below
    rows = [(0, n, i, None) for n, i in enumerate(i for r in range(5) for i, c in enumerate(counts) if r < c)]
    out = calls(rows, max_batch)
    assert sorted(r for part in out for r in part) == sorted(rows)
    for part in out:
        assert 1 <= len(part) <= max_batch
        images = [i for _, _, i, _ in part]
        firsts = list(dict.fromkeys(images))
        assert images == [i for i in firsts for _ in range(images.count(i))]  # image-major
        for i in firsts:  # an image is split over calls only when it has more rows than max_batch
            assert images.count(i) == counts[i] or counts[i] > max_batch
    packed, free = 0, 0  # whole images in arrival order, a new call when the next does not fit
    for i in dict.fromkeys(i for _, _, i, _ in rows):
        if counts[i] > max_batch:
            packed += -(-counts[i] // max_batch)
        elif counts[i] > free:
            packed, free = packed + 1, max_batch - counts[i]
        else:
            free -= counts[i]
    assert len(out) == packed


def test_a_photo_seen_before_skips_the_vision_encoder_with_the_same_records(server, images):
    """The page's way: a caption, then questions about the same upload. The second and third requests find the
    image's encoding in the cache (GET /health counts it), and their records are those of a fresh encoding."""
    photo = images[7]
    r = post(server, "/v1/vqa", [upload(photo)], question=QUESTIONS[1])  # cached now, if no earlier test sent it
    assert r.status_code == 200, r.text
    first = r.json()["results"][0]
    hits = httpx.get(server.url + "/health").json()["image_cache"]["hits"]
    again = post(server, "/v1/vqa", [upload(photo, name="renamed.png")], question=QUESTIONS[1]).json()["results"][0]
    post(server, "/v1/caption", [upload(photo)]).raise_for_status()
    cache = httpx.get(server.url + "/health").json()["image_cache"]
    assert cache["hits"] == hits + 2 and cache["size"] == 64 and cache["images"] >= 1
    assert again["input"] == "renamed.png" and again["file"] == first["file"]  # the key is the bytes, not the name
    assert (again["ids"], again["text"]) == (first["ids"], first["text"])
    assert abs(again["score"] - first["score"]) <= SCORE_TOL * max(1, abs(first["score"]))


def test_the_image_cache_encodes_each_new_image_once_and_forgets_the_oldest(images):
    """batcher.encode with an ImageCache of 2: an upload repeated in one batch is encoded once; a cached one
    not at all; the least recently used goes first; the features are those a fresh encoding gives."""
    import torch

    from git_scratch.load import load
    from git_scratch.preprocessing.processor import Processor
    from git_scratch.serve.batcher import ImageCache, encode

    model, proc = load(DEMO), Processor.from_pretrained(DEMO)
    px = [proc(images=[p]).pixel_values[0] for p in images[:3]]
    encoded = []
    real = model.encode_image
    model.encode_image = lambda pixels: encoded.append(len(pixels)) or real(pixels)
    cache = ImageCache(2)
    with torch.inference_mode():
        a = encode(model, [px[0], px[1], px[0]], ["a", "b", "a"], 8, cache)
        assert encoded == [2] and a[2] is a[0]  # "a" twice in one batch: encoded once
        b = encode(model, [px[1], px[2]], ["b", "c"], 8, cache)  # "b" cached; "c" pushes out "a", the oldest
        assert encoded == [2, 1] and list(cache.store) == ["b", "c"]
        c = encode(model, [px[0]], ["a"], 8, cache)
        assert encoded == [2, 1, 1]  # forgotten, so encoded again
        fresh = real(torch.stack(px))
    # a batch of 2 against one of 3: the same products summed in another blocking, float32 rounding
    for got, want in ((a[0], fresh[0]), (b[0], fresh[1]), (b[1], fresh[2]), (c[0], fresh[0])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (cache.hits, cache.misses) == (1, 5)


# ---------------------------------------------------------------- hostile uploads and bad requests
def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bad_files(images, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {"notes.png": b"not an image at all\n", "cut.png": images[0].read_bytes()[:300],
             "bomb.png": png_claiming(100_000, 100_000), "clip.mp4": b"\0\0\0\x18ftypmp42 not really a video"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    Image.new("RGB", (60_000, 1), (200, 30, 30)).save(d / "thin.png")  # an extreme aspect ratio: 96 x 5.76M
    return [*(d / name for name in files), d / "thin.png"]


def test_an_unreadable_image_is_a_422_with_the_command_lines_reason(server, images, bad_files, capsys):
    reasons = {Path(r["input"]).name: r["error"] for r in cli(capsys, "caption", *bad_files)}
    assert len(reasons) == len(bad_files)
    for path in bad_files:
        r = post(server, "/v1/caption", [upload(path)])
        assert (r.status_code, error(r)) == (422, f"{path.name}: {reasons[path.name]}")
        r = post(server, "/v1/vqa", [upload(path)], question="what is it?")
        assert (r.status_code, error(r)) == (422, f"{path.name}: {reasons[path.name]}")
    # among good images, each bad one is an error record of its own, in upload order; the good ones still run
    mixed = [images[0], *bad_files, images[1]]
    served = post(server, "/v1/caption", [upload(p) for p in mixed]).json()["results"]
    printed = {Path(r["input"]).name: r for r in cli(capsys, "caption", *mixed)}
    for rec, p in zip(served, mixed, strict=True):
        same_record(rec, printed[p.name], p)
    assert "text" in served[0] and "text" in served[-1]


LONG = "what is " + "the colour of " * 40 + "the circle?"  # 326 wordpieces of the demo vocabulary: past its 64 text positions


@pytest.mark.parametrize("endpoint, files, fields, status, said", [
    ("/v1/caption", False, {}, 422, "image: field required"),
    ("/v1/vqa", True, {}, 422, "question: field required"),
    ("/v1/caption", True, {"num_beams": "0"}, 422, "num_beams must be at least 1, got 0"),  # generation/checks.py
    ("/v1/caption", True, {"max_new_tokens": "0"}, 422, "max_new_tokens must be at least 1, got 0"),
    ("/v1/caption", True, {"num_beams": "17"}, 422, "num_beams must be at most 16 on this server, got 17"),
    ("/v1/caption", True, {"num_beams": "lots"}, 422, "num_beams: input should be a valid integer"),
    ("/v1/caption", True, {"max_new_tokens": "1000"}, 422, "max_new_tokens 1000 cannot be reached: the model has 64"),
    ("/v1/vqa", True, {"question": LONG}, 422, "the question is 326 tokens long (with [CLS]); with max_new_tokens 20"),
    ("/v1/vqa", True, {"question": " "}, 422, "the question is empty"),
    ("/v1/explain", True, {"method": "guess"}, 422, "method: string should match pattern"),
], ids=["no image", "no question", "zero beams", "no new tokens", "too many beams", "beams not a number",
        "too many tokens", "long question", "empty question", "bad explain method"])
def test_a_bad_request_is_one_json_error_and_the_server_keeps_serving(server, images, endpoint, files, fields,
                                                                        status, said):
    r = post(server, endpoint, [upload(images[0])] if files else None, **fields)
    assert r.status_code == status
    assert error(r).startswith(said), r.json()
    assert post(server, "/v1/caption", [upload(images[1])]).json()["results"][0]["text"].startswith("a ")


def test_a_question_that_cannot_be_asked_fails_alone(server, images):
    served = post(server, "/v1/vqa", [upload(images[0])], question=[QUESTIONS[0], LONG, QUESTIONS[1]]).json()
    good, bad, also = served["results"]
    assert bad["question"] == LONG and bad["error"].startswith("the question is 326 tokens long") and "text" not in bad
    assert (good["question"], also["question"]) == (QUESTIONS[0], QUESTIONS[1]) and good["text"] and also["text"]


def test_not_a_form_and_the_wrong_method_are_json_errors(server):
    r = httpx.post(server.url + "/v1/caption", json={"image": "cat.jpg"})
    assert (r.status_code, error(r)) == (422, "image: field required")
    r = httpx.get(server.url + "/v1/caption")
    assert r.status_code == 405 and error(r)


# ---------------------------------------------------------------- 413: refused before the body is read whole
PART = (b'--B\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n")
HEAD = b"POST /v1/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=B\r\n"


def answer_to(server, head: bytes, parts: list[bytes]) -> tuple[int, str]:
    """Send `head` and `parts` over a raw socket, stop there (the body's end is never sent), read the answer:
    its status and its error."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head)
        for part in parts:
            s.sendall(part)
        data = b""
        while chunk := s.recv(65536):  # the server closes the connection after its answer
            data += chunk
    status, body = data.split(b"\r\n", 1)[0], data.split(b"\r\n\r\n", 1)[1]
    said = json.loads(body)
    assert list(said) == ["error", "request_id"] and said["request_id"]
    return int(status.split()[1]), said["error"]


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(server):
    limit = 2**20  # the module server's --max-upload-mb 1
    too_large = "request body over the 1 MiB limit (--max-upload-mb)"
    # a Content-Length over the limit: refused at once, after 64 KiB of a declared 100 MiB
    head = HEAD + b"Content-Length: %d\r\n\r\n" % (100 * limit)
    assert answer_to(server, head, [PART + b"x" * 65536]) == (413, too_large)
    # no Content-Length (chunked): refused once the bytes read pass the limit; the body's end never comes
    def chunked(data: bytes) -> bytes:
        return b"%x\r\n" % len(data) + data + b"\r\n"

    parts = [chunked(PART)] + [chunked(b"x" * 65536)] * (limit // 65536 + 1)
    assert answer_to(server, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", parts) == (413, too_large)
    # through a client: the same answer
    r = httpx.post(server.url + "/v1/caption", files=[("image", ("big.png", b"x" * (limit + 1), "image/png"))])
    assert (r.status_code, error(r)) == (413, too_large)


# ---------------------------------------------------------------- the service
def test_health_page_and_api_docs_and_it_binds_localhost(server):
    assert server.url.startswith("http://127.0.0.1:")  # no --host given
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["checkpoint"] == DEMO.name and h["max_batch"] == 8
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'id="drop"' in page.text and "/page/app.js" in page.text
    assert httpx.get(server.url + "/page/app.js").status_code == 200
    assert httpx.get(server.url + "/docs").status_code == 200
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"/v1/caption", "/v1/vqa", "/v1/explain", "/health"} <= set(paths)


def test_explain_gives_each_greedy_word_a_map_over_the_patches_summing_to_1(server, images):
    (caption,) = post(server, "/v1/caption", [upload(images[2])]).json()["results"]
    words = post(server, "/v1/explain", [upload(images[2])]).json()["words"]
    assert [w["id"] for w in words] == caption["ids"][1:]  # the caption's words, [SEP] included
    for w in words:
        grid = w["map"]
        assert (len(grid), len(grid[0])) == (8, 8)  # 96 px / 12 px patches
        assert min(min(row) for row in grid) >= 0
        assert abs(sum(map(sum, grid)) - 1) < 1e-9  # float64 sums of 64 shares
    (answer,) = post(server, "/v1/vqa", [upload(images[2])], question=QUESTIONS[1]).json()["results"]
    words = post(server, "/v1/explain", [upload(images[2])], question=QUESTIONS[1]).json()["words"]
    assert [w["id"] for w in words] == answer["ids"][len(answer["ids"]) - len(words):]


def test_explain_after_a_caption_takes_the_cached_encoding_and_gives_the_fresh_maps(server, images):
    """The page's way: a caption and the explain maps of one upload. Explain finds the image's encoding in the
    cache (GET /health counts it) and its words and maps are those explain gives from the pixels."""
    from git_scratch.explain import explain
    from git_scratch.load import load
    from git_scratch.preprocessing.processor import Processor

    photo = images[6]
    post(server, "/v1/caption", [upload(photo)]).raise_for_status()  # encodes the photo, if no test sent it yet
    hits = httpx.get(server.url + "/health").json()["image_cache"]["hits"]
    words = post(server, "/v1/explain", [upload(photo)]).json()["words"]
    assert httpx.get(server.url + "/health").json()["image_cache"]["hits"] == hits + 1
    model, proc = load(DEMO), Processor.from_pretrained(DEMO)
    fresh = explain(model, proc.tokenizer, proc(images=[photo]).pixel_values)
    assert [w["id"] for w in words] == [w["id"] for w in fresh]
    for got, want in zip(words, fresh):  # features from a batch of 1 either way: float32 rounding at most
        assert max(abs(a - b) for ra, rb in zip(got["map"], want["map"]) for a, b in zip(ra, rb)) < 1e-6


# ---------------------------------------------------------------- a full queue, and stopping
def batches_run(arrivals, max_wait: float):
    """A started Batcher over a stand-in model that records the jobs of each batch it runs."""
    from git_scratch.serve.batcher import Batcher

    seen: list[list] = []
    batcher = Batcher(lambda jobs: seen.append(jobs) or [None] * len(jobs), max_batch=8, max_wait=max_wait,
                      arrivals=arrivals)
    batcher.start()
    return batcher, seen


def test_a_lone_request_does_not_wait_out_max_wait_when_no_other_is_on_its_way():
    from git_scratch.serve.batcher import Arrivals, Job

    batcher, seen = batches_run(Arrivals(), max_wait=30)
    start = time.monotonic()
    batcher.submit(Job(rows=[None])).result(timeout=60)
    waited = time.monotonic() - start
    batcher.close()
    assert len(seen) == 1 and waited < 10  # not the 30 s max_wait would allow (it takes QUIET_S, 10 ms)


def test_a_batch_waits_for_a_request_still_being_received_then_takes_it():
    from git_scratch.serve.batcher import Arrivals, Job

    arrivals = Arrivals()
    batcher, seen = batches_run(arrivals, max_wait=30)
    arrivals.expect()  # a second request is being received
    first = batcher.submit(Job(rows=[None]))
    time.sleep(0.3)
    assert not first.done()  # the batch waits for it
    second = batcher.submit(Job(rows=[None]))
    arrivals.arrived()
    first.result(timeout=60), second.result(timeout=60)
    batcher.close()
    assert [len(jobs) for jobs in seen] == [2]


def test_without_arrivals_a_batch_waits_max_wait_for_company():
    from git_scratch.serve.batcher import Job

    batcher, seen = batches_run(None, max_wait=0.3)
    start = time.monotonic()
    first = batcher.submit(Job(rows=[None]))
    time.sleep(0.1)
    second = batcher.submit(Job(rows=[None]))
    first.result(timeout=60), second.result(timeout=60)
    batcher.close()
    assert [len(jobs) for jobs in seen] == [2] and time.monotonic() - start >= 0.3


def demo_app(**options):
    """The real app over the demo model, in this process (ServeOptions' other fields at their defaults)."""
    from git_scratch.load import load
    from git_scratch.preprocessing.processor import Processor
    from git_scratch.serve.app import ServeOptions, create_app

    return create_app(load(DEMO), Processor.from_pretrained(DEMO), ServeOptions(str(DEMO), **options))


@contextmanager
def serving(app):
    """`app` on uvicorn in a thread of this process, on a free port: yields its URL; stops it after."""
    import uvicorn

    from git_scratch.cli.serve import listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)


def test_the_server_never_makes_a_lone_request_wait_out_max_wait(images):
    """In this process, the real app on uvicorn with --max-wait-ms 30000: one request at a time, each answered
    without waiting for company (its job counts as arrived once queued)."""
    with serving(demo_app(max_wait_ms=30000)) as url:
        start = time.monotonic()
        for path in images[:2]:
            assert httpx.post(url + "/v1/caption", files=[upload(path)], timeout=120).status_code == 200
        assert httpx.post(url + "/v1/vqa", files=[upload(images[0])], data={"question": QUESTIONS[0]},
                          timeout=120).status_code == 200
        took = time.monotonic() - start
    assert took < 20  # three requests, none waiting out its 30 s (each takes well under a second)


def test_every_request_stops_counting_as_arriving_once_answered(server, images):
    """Answered, refused (422, 413) or queued: none stays counted, which would make every batch wait out
    --max-wait-ms for a request that never comes."""
    assert post(server, "/v1/caption", [upload(images[0])]).status_code == 200
    assert post(server, "/v1/caption", [upload(images[0], data=b"not an image")]).status_code == 422
    assert post(server, "/v1/vqa", [upload(images[0])]).status_code == 422  # no question
    big = ("image", ("big.png", b"0" * (2 * 2**20), "image/png"))  # over the module server's 1 MiB
    assert post(server, "/v1/caption", [big]).status_code == 413
    assert httpx.get(server.url + "/health").json()["arriving"] == 0


def test_a_full_queue_answers_503_with_retry_after(images):
    """In this process, the real app on uvicorn with its worker held: one request runs, one waits (--queue 1),
    the next is refused; released, the two admitted ones are answered."""
    app = demo_app(max_batch=1, max_wait_ms=0, queue=1)
    batcher = app.state.batcher
    running, release, queued = threading.Event(), threading.Event(), threading.Event()
    real_run, real_submit = batcher.run, batcher.submit

    def held(jobs):
        running.set()
        release.wait(60)
        return real_run(jobs)

    def submit(job):
        future = real_submit(job)
        if running.is_set():
            queued.set()
        return future

    batcher.run, batcher.submit = held, submit
    answers = {}
    with serving(app) as url:

        def ask(name):
            answers[name] = httpx.post(url + "/v1/caption", files=[upload(images[0])], timeout=60)

        first = threading.Thread(target=ask, args=("running",))
        first.start()
        assert running.wait(60)
        second = threading.Thread(target=ask, args=("queued",))
        second.start()
        assert queued.wait(60)
        refused = httpx.post(url + "/v1/caption", files=[upload(images[0])], timeout=60)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert error(refused) == "the server is busy: 1 requests are waiting (--queue); retry shortly"
        release.set()
        first.join(60)
        second.join(60)
    assert [answers[k].status_code for k in ("running", "queued")] == [200, 200]
    assert answers["running"].json() == answers["queued"].json()


def test_sigterm_answers_the_requests_in_flight_then_exits(images, tmp_path):
    s = Server("--max-batch", 1, "--max-wait-ms", 0, "--max-rows", 256, log=tmp_path / "access.log")
    answers, done_at = {}, {}

    def ask(name, files, **fields):
        answers[name] = post(s, "/v1/caption", files, **fields)
        done_at[name] = time.monotonic()

    # ~1.5 s of work at --max-batch 1: 16 images, 16 beams each; and one small request waiting behind it
    slow = threading.Thread(target=ask, args=("slow", [upload(images[i % 8], f"{i}.png") for i in range(16)]),
                            kwargs={"num_beams": "16", "max_new_tokens": "63"})
    slow.start()
    health = {}
    deadline = time.monotonic() + 60
    while not health.get("running") and time.monotonic() < deadline:  # until the worker has it
        health = httpx.get(s.url + "/health").json()
    small = threading.Thread(target=ask, args=("small", [upload(images[1])]))
    small.start()
    while not health.get("queued") and time.monotonic() < deadline:  # until it waits in the queue
        health = httpx.get(s.url + "/health").json()
    assert health["running"] and health["queued"], health
    s.proc.send_signal(signal.SIGTERM)
    killed_at = time.monotonic()
    slow.join(120)
    small.join(120)
    rc = s.stop()
    assert done_at["slow"] > killed_at and done_at["small"] > killed_at  # both were in flight at SIGTERM
    assert [answers[k].status_code for k in ("slow", "small")] == [200, 200]
    assert all("text" in r for r in answers["slow"].json()["results"])
    assert len(answers["slow"].json()["results"]) == 16
    assert rc == 143
    assert "terminated (SIGTERM): every request in flight was answered; stopped" in "".join(s.stderr)


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("args, said", [
    (["--max-batch", "0"], "argument --max-batch: must be >= 1, got 0"),
    (["--max-wait-ms", "-1"], "argument --max-wait-ms: must be >= 0, got -1"),
    (["--queue", "x"], "argument --queue: invalid int value: 'x'"),
    (["--port", "70000"], "--port 70000: a port is 0 to 65535"),
    (["-c", "/nonexistent/ckpt", "--port", "0"], "cannot load checkpoint: /nonexistent/ckpt: no such checkpoint"),
])
def test_usage_errors_are_one_line_and_exit_2_before_anything_loads(capsys, args, said):
    rc, _, err = in_process(capsys, "serve", *args)
    assert rc == 2 and said in one_error(err)


def test_a_port_in_use_is_one_error_line_before_the_model_loads(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        rc, _, err = in_process(capsys, "serve", "--port", taken.getsockname()[1], "-c", "/nonexistent/ckpt")
    assert rc == 2 and "cannot listen there: Address already in use" in one_error(err)


def test_without_the_serve_extra_it_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    rc, _, err = in_process(capsys, "serve")
    assert rc == 2 and "pip install 'git_scratch[serve]'" in one_error(err)
