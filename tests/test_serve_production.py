"""`git-scratch serve` among real clients: every wait bounded, memory bounded, who may ask, one error shape.

A real server (the console script in a subprocess, the demo model) with short limits, so that a slow client is
cut in about a second: --header-timeout 1, --body-timeout 1, --timeout-keep-alive 1, --max-connections 8.
Times are checked against generous ceilings (the limit + 5 s: a loaded 2-core CI machine can be slow to schedule
the server), and always well under what the server would take without the limit (it would wait forever).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx
import pytest

from _serve_helpers import Server, error, shape_png
from test_serve import QUESTIONS, demo_app, serving, upload

SLACK_S = 5  # a 2-core CI machine under load schedules the server late; without the limits these waits never end
HOST = b"Host: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server("--header-timeout", 1, "--body-timeout", 1, "--timeout-keep-alive", 1, "--max-connections", 8,
               log=tmp_path_factory.mktemp("server") / "access.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return shape_png(tmp_path_factory.mktemp("shapes"), 0)


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_answer(s: socket.socket) -> tuple[int, dict | None, float]:
    """(status, the JSON body or None, seconds waited) once the server closes the connection; status 0: closed
    with no answer."""
    start, data = time.monotonic(), b""
    while chunk := s.recv(65536):
        data += chunk
    took = time.monotonic() - start
    if not data:
        return 0, None, took
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None, took


def said(status: int, body: dict | None) -> str:
    assert body is not None and list(body) == ["error", "request_id"] and body["request_id"], (status, body)
    return body["error"]


# ---------------------------------------------------------------- every wait bounded
def test_a_client_that_sends_nothing_or_dribbles_its_header_is_cut_with_408(server):
    with connect(server) as idle:
        status, body, took = read_answer(idle)
    assert status == 408 and "--header-timeout" in said(status, body) and took < 1 + SLACK_S
    with connect(server) as slow:  # slowloris: a header line every 0.3 s, never the blank line that ends it
        slow.sendall(b"POST /v1/caption HTTP/1.1\r\n" + HOST)
        start = time.monotonic()
        try:
            while time.monotonic() - start < 1 + SLACK_S:
                slow.sendall(b"X-Pad: 1\r\n")
                time.sleep(0.3)
        except OSError:  # the server closed the connection
            pass
        status, body, _ = read_answer(slow)
    assert time.monotonic() - start < 1 + SLACK_S + 1 and status == 408, (status, body)


def test_a_stalled_body_is_answered_408_and_the_server_keeps_serving(server, image):
    with connect(server) as s:  # a body 100 bytes short of its Content-Length: the audit's 45 s wait
        s.sendall(b"POST /v1/caption HTTP/1.1\r\n" + HOST + b"Content-Type: multipart/form-data; boundary=B\r\n"
                  b"Content-Length: 400\r\n\r\n" + b"--B\r\n" + b"x" * 295)
        status, body, took = read_answer(s)
    assert status == 408 and said(status, body).startswith("the request body stalled") and took < 1 + SLACK_S
    r = httpx.post(server.url + "/v1/caption", files=[upload(image)], timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["text"]


def test_an_idle_keep_alive_connection_is_closed(server):
    with connect(server) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\n" + HOST + b"\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):  # the head and the body may come in two packets
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert s.recv(65536) == b""  # closed by the server, with no answer: nothing was asked
    assert time.monotonic() - start < 1 + SLACK_S


def test_connections_past_the_limit_are_answered_503(server):
    held = [connect(server) for _ in range(8)]
    try:
        time.sleep(0.2)  # all 8 accepted before the ninth comes
        with connect(server) as ninth:
            status, body, took = read_answer(ninth)
        assert status == 503 and "--max-connections" in said(status, body) and took < SLACK_S
    finally:
        for s in held:
            s.close()


def test_sigterm_with_a_stalled_upload_exits_within_the_shutdown_limit(image, tmp_path):
    s = Server("--body-timeout", 600, "--shutdown-timeout", 2, log=tmp_path / "access.log")
    with connect(s) as stalled:
        stalled.sendall(b"POST /v1/caption HTTP/1.1\r\n" + HOST + b"Content-Type: multipart/form-data; "
                        b"boundary=B\r\nContent-Length: 400\r\n\r\n--B\r\n")
        time.sleep(0.3)  # the app is reading its body
        answered = {}
        t = threading.Thread(target=lambda: answered.update(
            r=httpx.post(s.url + "/v1/caption", files=[upload(image)], timeout=60)))
        t.start()
        time.sleep(0.5)  # the caption is in flight
        s.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        rc = s.proc.wait(2 + SLACK_S + 10)
        took = time.monotonic() - start
        t.join(30)
    s.stop()
    assert took < 2 + SLACK_S and rc == 143, (took, rc, "".join(s.stderr))
    assert answered["r"].status_code == 200  # the request in flight was answered; only the stalled one was cut


def test_a_stalled_upload_does_not_hold_a_batch_for_max_wait(image):
    """In this process, with --max-wait-ms 30000: while one upload is stalled, a caption is answered at once
    (the stalled upload stops counting as arriving after batcher-side STALLED_S)."""
    with serving(demo_app(max_wait_ms=30000)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as stalled:
            stalled.sendall(b"POST /v1/caption HTTP/1.1\r\n" + HOST + b"Content-Type: multipart/form-data; "
                            b"boundary=B\r\nContent-Length: 400\r\n\r\n--B\r\n")
            time.sleep(0.3)
            start = time.monotonic()
            r = httpx.post(url + "/v1/vqa", files=[upload(image)], data={"question": QUESTIONS[0]}, timeout=60)
            took = time.monotonic() - start
    assert r.status_code == 200 and took < 20  # not the 30 s a batch waits for a request on its way


# ---------------------------------------------------------------- memory bounded
def test_an_image_over_the_servers_pixel_budget_is_refused_from_its_header(server, image):
    """--max-pixels defaults to 16M on the server (Pillow's budget is ~89M): 1 pixel over is a 422 before any
    decoding; the budget's worst case is stated in --help."""
    from test_serve import png_claiming

    r = httpx.post(server.url + "/v1/caption", files=[("image", ("big.png", png_claiming(4001, 4000), "image/png"))],
                   timeout=60)
    assert (r.status_code, error(r)) == (422, "big.png: 4001x4000 = 16004000 pixels is over the budget of 16000000 "
                                              "(possible decompression bomb)")


def test_the_help_states_the_pixel_budgets_worst_case(capsys):
    from _cli_helpers import in_process

    rc, out, _ = in_process(capsys, "serve", "--help")
    out = " ".join(out.split())
    assert rc == 0
    assert "--max-pixels N" in out and "default 16M" in out and "four concurrent 16 Mpx RGBA uploads" in out


# ---------------------------------------------------------------- who may ask, and what the operator sees
def test_every_answer_has_a_request_id_the_clients_when_it_is_plain(server, image):
    r = httpx.get(server.url + "/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.post(server.url + "/v1/vqa", files=[upload(image)], headers={"X-Request-ID": "bad id\x7f" + "x" * 80})
    assert r.status_code == 422 and len(r.headers["x-request-id"]) == 32  # not the client's: a fresh uuid
    assert error(r) == "question: field required"


def test_the_access_log_has_latency_the_request_id_and_the_errors_reason(server, image):
    httpx.post(server.url + "/v1/caption", files=[upload(image)], data={"num_beams": "0"},
               headers={"X-Request-ID": "find-me-42"})
    time.sleep(0.2)
    lines = [line for line in server.log.read_text().splitlines() if "id=find-me-42" in line]
    assert len(lines) == 1 and '"POST /v1/caption" 422' in lines[0] and "ms id=find-me-42" in lines[0]
    assert 'error="num_beams must be at least 1, got 0"' in lines[0]


def test_liveness_readiness_and_no_local_path_in_health(server):
    assert httpx.get(server.url + "/health/live").json() == {"status": "ok"}
    assert httpx.get(server.url + "/health/ready").json() == {"status": "ready"}
    health = httpx.get(server.url + "/health").text
    assert "/" not in json.loads(health)["checkpoint"] and "shapes_demo" in health


def test_metrics_parse_and_count_requests_batches_and_cut_clients(server, image):
    from prometheus_client.parser import text_string_to_metric_families

    httpx.post(server.url + "/v1/caption", files=[upload(image)], timeout=60).raise_for_status()
    with connect(server) as idle:  # cut by the header timeout
        read_answer(idle)
    r = httpx.get(server.url + "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    ok = [s for s in families["git_scratch_requests"].samples
          if s.name.endswith("_total") and s.labels == {"endpoint": "/v1/caption", "status": "200"}]
    assert ok and ok[0].value >= 1
    assert any(s.name == "git_scratch_batch_rows_count" and s.value >= 1 for s in families["git_scratch_batch_rows"].samples)
    assert any(s.name == "git_scratch_request_seconds_bucket" for s in families["git_scratch_request_seconds"].samples)
    cut = {s.labels["reason"]: s.value for s in families["git_scratch_clients_cut"].samples}
    assert cut["header"] >= 1
    assert {"git_scratch_queue_depth", "git_scratch_rows_in_flight", "git_scratch_images"} <= set(families)


def test_without_prometheus_client_metrics_say_how_to_install(monkeypatch):
    import sys

    from fastapi.testclient import TestClient

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with TestClient(demo_app()) as client:
        r = client.get("/metrics", headers={"Host": "127.0.0.1"})
    assert r.status_code == 501 and "pip install" in error(r)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text("s3cret-key\n")
    s = Server("--api-key-file", key_file, "--allowed-hosts", "127.0.0.1,serve.example",
               "--cors-origins", "https://app.example")
    yield s
    s.stop()


def test_with_an_api_key_v1_needs_it_and_health_stays_open(keyed, image):
    r = httpx.post(keyed.url + "/v1/caption", files=[upload(image)])
    assert r.status_code == 401 and "API key" in error(r)
    r = httpx.post(keyed.url + "/v1/caption", files=[upload(image)], headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    for headers in ({"Authorization": "Bearer s3cret-key"}, {"X-API-Key": "s3cret-key"}):
        r = httpx.post(keyed.url + "/v1/caption", files=[upload(image)], headers=headers, timeout=60)
        assert r.status_code == 200, r.text
    assert httpx.get(keyed.url + "/metrics").status_code == 401
    assert httpx.get(keyed.url + "/health").status_code == 200 and httpx.get(keyed.url + "/health/ready").status_code == 200


def test_the_host_allow_list_and_cross_origin_posts(keyed, server, image):
    key = {"X-API-Key": "s3cret-key"}
    r = httpx.get(keyed.url + "/health", headers={"Host": "evil.example"})
    assert r.status_code == 400 and error(r) == "host 'evil.example' is not served here (--allowed-hosts)"
    assert httpx.get(keyed.url + "/health", headers={"Host": "serve.example:80"}).status_code == 200
    assert httpx.get(server.url + "/", headers={"Host": "evil.example"}).status_code == 400  # the default list
    assert httpx.get(server.url + "/health", headers={"Host": "localhost"}).status_code == 200
    r = httpx.post(keyed.url + "/v1/caption", files=[upload(image)], headers={**key, "Origin": "https://evil.example"})
    assert r.status_code == 403 and "--cors-origins" in error(r)
    r = httpx.post(keyed.url + "/v1/caption", files=[upload(image)], headers={**key, "Origin": "https://app.example"},
                   timeout=60)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.options(keyed.url + "/v1/caption", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"


def test_a_non_loopback_bind_without_a_key_warns(tmp_path):
    s = Server("--host", "0.0.0.0")
    try:
        time.sleep(0.5)
    finally:
        s.stop()
    said = "".join(s.stderr)
    assert "warning: serving on 0.0.0.0 with no API key" in said
    assert "warning: only requests naming localhost, 127.0.0.1, ::1 in their Host header are served" in said


# ---------------------------------------------------------------- one error contract
@pytest.mark.parametrize("endpoint, fields, said", [
    ("/v1/caption", {"num_beams": ["2", "3"]}, "num_beams: one value only, sent 2 times"),
    ("/v1/caption", {"temperature": "5"}, "unknown field: temperature; this endpoint takes deadline_s, image, "
                                          "max_new_tokens, num_beams"),
    ("/v1/vqa", {"question": "what?", "sample": "true"}, "unknown field: sample;"),
    ("/v1/explain", {"question": ["a?", "b?"]}, "question: one value only, sent 2 times"),
], ids=["repeated", "temperature", "sample", "two explain questions"])
def test_unknown_and_repeated_fields_are_422(server, image, endpoint, fields, said):
    r = httpx.post(server.url + endpoint, files=[upload(image)], data=fields, timeout=60)
    assert r.status_code == 422 and error(r).startswith(said)


def test_vqa_with_two_images_is_422_not_an_answer_about_the_last(server, image):
    r = httpx.post(server.url + "/v1/vqa", files=[upload(image), upload(image)], data={"question": "what?"}, timeout=60)
    assert (r.status_code, error(r)) == (422, "image: one value only, sent 2 times")


@pytest.mark.parametrize("head", [
    b"POST /v1/caption HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n",
    b"POST /v1/caption HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
], ids=["bad content-length", "length and chunked", "bad host", "garbage"])
def test_framing_errors_are_json_400s(server, head):
    with connect(server) as s:
        s.sendall(head)
        status, body, _ = read_answer(s)
    assert status == 400 and said(status, body)


# ---------------------------------------------------------------- deadlines and cancellation
@pytest.fixture
def held_app():
    """The real app on uvicorn in this process, its worker held until `release` is set; `ran` lists the jobs of
    each batch the model ran."""
    app = demo_app(max_batch=8, max_wait_ms=0)
    batcher = app.state.batcher
    running, release, ran = threading.Event(), threading.Event(), []
    real_run = batcher.run

    def held(jobs):
        running.set()
        release.wait(60)
        ran.append(jobs)
        return real_run(jobs)

    batcher.run = held
    with serving(app) as url:
        yield url, app, running, release, ran
        release.set()


def queued(app, n: int) -> None:
    deadline = time.monotonic() + 30
    while app.state.batcher.queue.qsize() < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.state.batcher.queue.qsize() == n


def test_a_request_past_its_deadline_is_504_its_rows_never_run_and_the_next_is_served(held_app, image):
    url, app, running, release, ran = held_app
    first = threading.Thread(target=lambda: httpx.post(url + "/v1/caption", files=[upload(image)], timeout=60))
    first.start()
    assert running.wait(30)  # the worker holds the first request's batch
    start = time.monotonic()
    r = httpx.post(url + "/v1/caption", files=[upload(image, "late.png")], data={"deadline_s": "0.5"}, timeout=60)
    assert r.status_code == 504 and "deadline of 0.5 s" in error(r) and time.monotonic() - start < 0.5 + SLACK_S
    release.set()
    first.join(60)
    r = httpx.post(url + "/v1/caption", files=[upload(image)], timeout=60)
    assert r.status_code == 200
    assert [len(jobs) for jobs in ran] == [1, 1]  # the late request's job left the queue: never in a batch


def test_the_work_of_a_client_that_left_is_dropped_before_it_runs(held_app, image):
    url, app, running, release, ran = held_app
    first = threading.Thread(target=lambda: httpx.post(url + "/v1/caption", files=[upload(image)], timeout=60))
    first.start()
    assert running.wait(30)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(url + "/v1/caption", files=[upload(image, "gone.png")], timeout=1)
    deadline = time.monotonic() + 30
    while not app.state.batcher.queue.queue[0].future.cancelled() and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    first.join(60)
    assert httpx.post(url + "/v1/caption", files=[upload(image)], timeout=60).status_code == 200
    assert [len(jobs) for jobs in ran] == [1, 1]  # the batch after the first is the last request's alone


def test_a_deadline_of_zero_is_422(server, image):
    r = httpx.post(server.url + "/v1/caption", files=[upload(image)], data={"deadline_s": "0"}, timeout=60)
    assert r.status_code == 422 and "deadline_s" in error(r)


def test_one_request_cannot_ask_for_more_than_max_rows_beams(server, image):
    """The audit's 32 images x 16 beams held the worker 16.9 s; at --max-batch 8 a request may ask for 16 x 8
    rows x beams."""
    r = httpx.post(server.url + "/v1/caption", files=[upload(image, f"{i}.png") for i in range(9)],
                   data={"num_beams": "16"}, timeout=60)
    assert (r.status_code, error(r)) == (422, "9 rows x 16 beams = 144: at most 128 per request on this server "
                                              "(--max-rows); send fewer at a time")
    r = httpx.post(server.url + "/v1/vqa", files=[upload(image)], data={"question": ["what?"] * 9, "num_beams": "16"},
                   timeout=60)
    assert r.status_code == 422 and error(r).startswith("9 rows x 16 beams = 144")
