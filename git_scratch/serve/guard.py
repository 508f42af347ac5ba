"""What keeps `git-scratch serve` alive among its clients: every wait bounded, and who may ask.

    connection ─▶ GuardedH11: at most max_connections open (more: 503), the request's headers within
                  header_timeout (else 408 and closed); between requests, uvicorn's keep-alive timeout
    request    ─▶ Front: a request id, the Host allow-list, the Origin check, the API key, one access-log line,
                  the metrics; then BodyTimeout: each part of the body within body_timeout (else 408)

Every refusal here is the server's one error shape, {"error": ..., "request_id": ...}, in JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("git_scratch.serve")
OPEN_PATHS = ("/health", "/page/", "/docs", "/openapi.json")  # never need the key: no data in them
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass
class Limits:
    """The server's bounds on its clients (the flags of `git-scratch serve`), and how often each was hit."""

    header_timeout: float = 10.0  # seconds from a connection's first byte (or its last answer) to a whole header
    body_timeout: float = 30.0  # seconds any one part of a body may take to come
    max_connections: int = 256  # connections open at once; more are answered 503 and closed
    api_key: str | None = None  # when set, /v1/ and /metrics need it (Authorization: Bearer KEY, or X-API-Key)
    allowed_hosts: list[str] = field(default_factory=lambda: ["*"])  # Host header values served; "*": any
    cors_origins: list[str] = field(default_factory=list)  # other origins whose pages may call the API
    cut: dict = field(default_factory=lambda: {"header": 0, "body": 0, "connections": 0})  # clients cut, by why


def new_request_id(given: bytes | None) -> str:
    """The client's X-Request-ID when it is a short plain token, else a fresh one."""
    text = (given or b"").decode("latin-1")
    return text if REQUEST_ID.fullmatch(text) else uuid.uuid4().hex


def error_body(message: str, request_id: str | None) -> bytes:
    return json.dumps({"error": message, "request_id": request_id}).encode()


def raw_response(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection, for where no ASGI app runs."""
    request_id = uuid.uuid4().hex
    body = error_body(message, request_id)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"x-request-id: {request_id}\r\nconnection: close\r\n\r\n").encode() + body


def guarded_protocol(limits: Limits) -> type:
    """uvicorn's h11 protocol with a header timeout, a connection limit, and JSON framing errors."""

    class GuardedH11(H11Protocol):
        header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                limits.cut["connections"] += 1
                log.warning("connection refused: %d open (--max-connections)", len(self.connections) - 1)
                transport.write(raw_response(503, "Service Unavailable", f"the server has {limits.max_connections} "
                                             "connections open (--max-connections); retry shortly"))
                transport.close()
                return
            self.wait_for_headers()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.wait_for_headers()  # a new request begins: its header has header_timeout to come whole
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before and self.header_timer is not None:  # the header came whole
                self.header_timer.cancel()
                self.header_timer = None

        def connection_lost(self, exc):
            if self.header_timer is not None:
                self.header_timer.cancel()
            super().connection_lost(exc)

        def wait_for_headers(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(limits.header_timeout, self.headers_too_slow)

        def headers_too_slow(self) -> None:
            self.header_timer = None
            if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
                return
            limits.cut["header"] += 1
            log.warning("client %s cut: no whole request header within %gs (--header-timeout)",
                        self.client and self.client[0], limits.header_timeout)
            self.transport.write(raw_response(408, "Request Timeout", "no whole request header within "
                                              f"{limits.header_timeout:g} s (--header-timeout)"))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:  # h11 refused the framing: bad Content-Length, say
            if not self.transport.is_closing():
                self.transport.write(raw_response(400, "Bad Request", "invalid HTTP request: bad framing or "
                                                  "headers (a Content-Length that is not a number, say)"))
                self.transport.close()

    return GuardedH11


class BodyTimeout:
    """ASGI middleware: each part of a request body must come within `limits.body_timeout` seconds; when one
    does not, the request is answered 408 and its connection closed (counted and logged)."""

    def __init__(self, app, limits: Limits, error):
        self.app, self.limits, self.error = app, limits, error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        whole = False  # once the body is whole, receive() waits for the client to leave: no timeout then

        async def timed():
            nonlocal whole
            if whole:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout)
                whole = not message.get("more_body", False)
                return message
            except asyncio.TimeoutError:
                self.limits.cut["body"] += 1
                raise self.error(408, f"the request body stalled: no part of it within {self.limits.body_timeout:g} "
                                      "s (--body-timeout)", {"Connection": "close"}) from None

        await self.app(scope, timed, send)


class Front:
    """ASGI middleware, the outermost: gives each request an id (the client's X-Request-ID when it is a plain
    token), answers it in the X-Request-ID header, refuses a Host not allowed (400), a cross-origin POST from an
    origin not allowed (403) and, with an API key, a request without it (401); then logs one access line (status,
    latency, the error's reason) and counts the request in `metrics`."""

    def __init__(self, app, limits: Limits, metrics):
        self.app, self.limits, self.metrics = app, limits, metrics
        self.key = None if limits.api_key is None else limits.api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = new_request_id(headers.get(b"x-request-id"))
        start, said = time.monotonic(), {"status": 500, "error": ""}
        scope.setdefault("state", {}).update(request_id=request_id, started=start)

        async def answer(message):
            if message["type"] == "http.response.start":
                said["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body" and said["status"] >= 400 and not said["error"]:
                said["error"] = error_of(message.get("body", b""))
            await send(message)

        refusal = self.refusal(scope, headers)
        try:
            if refusal is None:
                await self.app(scope, receive, answer)
            else:
                await json_answer(answer, *refusal, request_id)
        finally:
            took = time.monotonic() - start
            endpoint = self.metrics.endpoint(scope["path"])
            self.metrics.answered(endpoint, said["status"], took)
            client = scope.get("client") or ("-", 0)
            log.info('%s "%s %s" %d %.1fms id=%s%s', client[0], scope["method"], scope["path"], said["status"],
                     took * 1000, request_id, f' error="{said["error"]}"' if said["error"] else "")

    def refusal(self, scope, headers: dict) -> tuple[int, str, dict] | None:
        """(status, why, headers) for a request refused before the app sees it, or None."""
        host = headers.get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host  # drop a port; keep an IPv6 literal
        if "*" not in self.limits.allowed_hosts and name.strip("[]") not in self.limits.allowed_hosts:
            return 400, f"host {host!r} is not served here (--allowed-hosts)", {}
        origin = headers.get(b"origin", b"").decode("latin-1")
        if (scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin and origin.split("://")[-1] != host
                and origin not in self.limits.cors_origins and "*" not in self.limits.cors_origins):
            return 403, f"origin {origin} may not call this server (--cors-origins)", {}
        if (self.key is not None and not scope["path"].startswith(OPEN_PATHS) and scope["path"] != "/"
                and scope["method"] != "OPTIONS"):  # a browser's CORS preflight carries no key
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if not hmac.compare_digest(given, self.key):
                return 401, "this server needs an API key: Authorization: Bearer KEY, or X-API-Key: KEY", \
                    {"WWW-Authenticate": "Bearer"}
        if b"content-length" in headers and b"transfer-encoding" in headers:
            return 400, "both Content-Length and Transfer-Encoding: send one", {"Connection": "close"}
        return None


async def json_answer(send, status: int, message: str, headers: dict, request_id: str) -> None:
    body = error_body(message, request_id)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def error_of(body: bytes) -> str:
    """The "error" of a JSON error body (its first chunk), for the access log; "" when there is none."""
    try:
        return str(json.loads(body).get("error", ""))[:200]
    except (ValueError, AttributeError):
        return ""
