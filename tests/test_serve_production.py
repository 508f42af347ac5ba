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
        first = s.recv(65536)
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
