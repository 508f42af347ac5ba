"""The HTTP side of `git-scratch serve`: a FastAPI app over one loaded model and its Batcher.

    POST /v1/caption   multipart: image (one or more), max_new_tokens, num_beams -> {"results": [record per image]}
    POST /v1/vqa       multipart: image (one), question (one or more), ...   -> {"results": [record per question]}
    POST /v1/explain   multipart: image, question (optional), max_new_tokens -> {"words": [{token, id, map}]}
                       (the image's encoding from --image-cache when a caption or question about it has run)
    GET  /health       200 {"status": "ok", ...} (the port opens once the model is loaded)
    GET  /health/live  200 while the process serves; GET /health/ready 200 once loaded, 503 while draining
    GET  /metrics      Prometheus' text format (serve/metrics.py); 501 without prometheus_client
    GET  /             the page (page/index.html); GET /docs the API (page/docs.html, drawn from /openapi.json
                       with nothing from a CDN, so that it works offline)

A record is what `caption --json` / `vqa --json` print for a file: "input" is the upload's file name as the client
sent it (the command line's path as given), "file" is "sha256:" + the digest of the uploaded bytes (the command
line's resolved path: what identifies the input, however it is named), then "question", "text", "ids", "score" and
"settings" (evaluation/records.py), or "error" in place of the result for an image or question that cannot run.

What a client sends cannot harm the server or another client:
    413  a body over --max-upload-mb: refused from its Content-Length before any of it is read, or, without one,
         as soon as the bytes read pass the limit (UploadLimit)
    422  a missing field or bad option; a request with nothing that can run (no readable image; no question
         that fits; /v1/explain of an ONNX export, which has no attention maps) has the reason as its one
         `error`. Images are read as the command line reads them (preprocessing/processor.py: the pixel budget
         before decoding, truncated data, the resize budget of an extreme aspect ratio), so they fail with its
         reasons
    503  the queue (--queue requests) is full, or the server is stopping: with Retry-After
Every error body is one JSON object {"error": "...", "request_id": "..."}; serve/guard.py adds the bounds on
slow and idle clients (408), on connections (503), the Host allow-list (400), the Origin check (403) and the
API key (401). A form field the endpoint does not take, or one that takes one value sent twice, is a 422.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException

from ..evaluation.records import checkpoint_fingerprint, settings
from ..explain import NEEDS_TORCH, explain as explain_words
from ..export.runtime import OnnxGIT
from ..generation.checks import decoding_error, room_error
from .batcher import Arrivals, Batcher, Closed, Decoding, ImageCache, Job, QueueFull, Row, encode, run_jobs
from .guard import BodyTimeout, Front, Limits
from .metrics import INSTALL, Metrics

PAGE = Path(__file__).parent / "page"
MAX_BEAMS = 16  # a request's beams are rows of the batch: bounded so that one request cannot take the memory
MAX_IMAGES = 32  # images per caption request
MAX_QUESTIONS = 32  # questions per vqa request
MAX_QUESTION_CHARS = 4096  # refused before tokenizing; the text positions bound what is left
# Bounds shown in /openapi.json; decoding() checks them (generation/checks.py), in the command line's words
AT_LEAST_1, BEAMS = {"minimum": 1}, {"minimum": 1, "maximum": MAX_BEAMS}
RETRY_AFTER_S = 1
CLOSE = {"Connection": "close"}  # after a 413: the body past the limit is never kept
LINGER_S = 0.5  # after a 413, how long the client may pause before the connection closes (UploadLimit)
STALLED_S = 0.05  # a body that pauses this long stops counting as arriving until its next part (Arriving)
DECODING_FIELDS = {"max_new_tokens", "num_beams", "deadline_s"}
DEADLINE = {"exclusiveMinimum": 0}
CLIENT_GONE = 499  # nginx's status for a client that closed its connection: only the access log sees it


@dataclass
class ServeOptions:
    checkpoint: str  # the checkpoint directory (its fingerprint goes into every record's settings)
    name: str = ""  # what /health shows of the checkpoint: the name the user gave, never a path on this disk
    precision: dict = field(default_factory=lambda: {"dtype": "float32"})  # what results record of how the model computes: Precision.settings(), {"dtype", "quantize"}
    max_batch: int = 8  # rows (image, prompt) per generate call
    max_wait_ms: float = 100.0  # the longest the first request of a batch waits for others on their way
    queue: int = 64  # requests waiting; more get 503
    max_upload_mb: float = 20.0  # request body limit, MiB
    image_cache: int = 64  # images whose encodings are kept (batcher.ImageCache); 0: none
    limits: Limits = field(default_factory=Limits)  # timeouts, connections, key, hosts (serve/guard.py)
    deadline_s: float = 60.0  # a request not answered by then gets 504 and its rows leave the queue
    max_rows: int | None = None  # most rows x beams one request may ask for; None: 16 x max_batch


class ClientError(HTTPException):
    """A request the server refuses: its status and one line."""


class UploadLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 before it is read whole.

    With a Content-Length over the limit, at once, nothing read. Without one (chunked), the bytes are counted as
    the app reads them; past the limit, what the client is still sending is read and dropped (`drain`), then the
    answer closes the connection."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await error_response(413, self.too_large(), CLOSE, scope)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await drain(receive, message, self.limit)
                raise ClientError(413, self.too_large(), CLOSE)  # in the form parser: FastAPI re-raises HTTPExceptions
            return message

        await self.app(scope, counted, send)

    def too_large(self) -> str:
        return f"request body over the {self.limit / 2**20:g} MiB limit (--max-upload-mb)"


class Arriving:
    """ASGI middleware: counts each POST to /v1/ in `arrivals` from its first byte until its job is queued
    (`request.state.arrived()`, called by the endpoint) or it has failed, whichever comes first. So a batch waits
    for requests still being received and read (their forms are parsed before an endpoint runs), and only for
    those: a lone request starts within batcher.QUIET_S (Batcher.gather). A body that pauses for STALLED_S stops
    counting until its next part comes, so that a stalled upload never holds every batch for --max-wait-ms."""

    def __init__(self, app, arrivals: Arrivals):
        self.app, self.arrivals = app, arrivals

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        pending = True

        def arrived():
            nonlocal pending
            if pending:
                pending = False
                self.arrivals.arrived()

        async def watched():
            nonlocal pending
            part = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({part}, timeout=STALLED_S)
            if not done and pending:  # stalled: not on its way until the next part comes
                pending = False
                self.arrivals.arrived()
                try:
                    await part
                finally:
                    pending = True
                    self.arrivals.expect()
            return await part

        self.arrivals.expect()
        scope.setdefault("state", {})["arrived"] = arrived
        try:
            await self.app(scope, watched, send)
        finally:
            arrived()


async def drain(receive, message: dict, cap: int) -> None:
    """Read and drop the body the client is still sending after `message`, until it pauses for LINGER_S or `cap`
    more bytes came. Why: closing a connection with bytes unread makes the kernel reset it, and the reset can
    discard the answer before a client that sends its whole body first has read it (seen: 4 of 10 tests)."""
    dropped = 0
    while message.get("more_body") and dropped <= cap:
        with anyio.move_on_after(LINGER_S) as wait:
            message = await receive()
        if wait.cancelled_caught or message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))


def error_response(status: int, message: str, headers: dict | None = None, scope: dict | None = None) -> JSONResponse:
    """The one error shape: {"error": message, "request_id": the id serve/guard.Front gave the request}."""
    request_id = (scope or {}).get("state", {}).get("request_id")
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers)


def only_fields(form, single: set, multi: set = frozenset()) -> None:
    """422 for a field the endpoint does not take, or a one-value field sent more than once (never the last
    value silently)."""
    names = [name for name, _ in form.multi_items()]
    if unknown := sorted(set(names) - single - multi):
        raise ClientError(422, f"unknown field{'s' * (len(unknown) > 1)}: {', '.join(unknown)}; this endpoint "
                               f"takes {', '.join(sorted(single | multi))}")
    if twice := sorted({n for n in names if n in single and names.count(n) > 1}):
        raise ClientError(422, f"{', '.join(twice)}: one value only, sent {names.count(twice[0])} times")


def create_app(model, processor, opts: ServeOptions) -> FastAPI:
    """The app serving `model` (loaded, eval mode) and `processor` (its checkpoint's, with a tokenizer)."""
    tok = processor.tokenizer
    fingerprint = checkpoint_fingerprint(opts.checkpoint)
    limit = model.config.text.max_positions
    cache = ImageCache(opts.image_cache) if opts.image_cache else None
    arrivals = Arrivals()
    metrics = Metrics(lambda: {"queue_depth": batcher.queue.qsize(), "rows_in_flight": batcher.running,
                               "arriving": arrivals.n, "cut": opts.limits.cut})

    def run_batch(jobs: list[Job]) -> list:
        metrics.batch(sum(j.size for j in jobs))
        return run_jobs(model, tok, jobs, opts.max_batch, cache)

    batcher = Batcher(run_batch, opts.max_batch, opts.max_wait_ms / 1000, opts.queue, arrivals)
    reading = anyio.CapacityLimiter(2)  # images decoded at once: each may take up to the pixel budget

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await anyio.to_thread.run_sync(batcher.close)  # uvicorn has let the requests in flight finish

    app = FastAPI(title="git-scratch serve", lifespan=lifespan, docs_url=None, redoc_url=None,  # theirs load a CDN
                  description="GIT captions and answers, batched across concurrent requests. Records are those "
                              "`git-scratch caption --json` and `vqa --json` print.")
    app.state.batcher, app.state.image_cache = batcher, cache  # GET /health reads them; tests hold the worker
    app.state.draining = lambda: batcher.closed  # the command line adds: uvicorn has had SIGTERM
    app.add_middleware(BodyTimeout, limits=opts.limits, error=ClientError)
    app.add_middleware(UploadLimit, limit=int(opts.max_upload_mb * 2**20))
    app.add_middleware(Arriving, arrivals=arrivals)  # outside those two: a request they refuse is counted too
    if opts.limits.cors_origins:  # the pages of these origins may call the API and read its answers
        app.add_middleware(CORSMiddleware, allow_origins=opts.limits.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "X-Request-ID"], expose_headers=["X-Request-ID"])
    app.add_middleware(Front, limits=opts.limits, metrics=metrics)  # the outermost: every answer has its id
    app.mount("/page", StaticFiles(directory=PAGE), name="page")

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return error_response(e.status_code, str(e.detail), getattr(e, "headers", None), request.scope)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):  # the worker failed (say, out of memory): logged, and JSON
        return error_response(500, f"internal error: {type(e).__name__}: {' '.join(str(e).split())}", None,
                              request.scope)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, e: RequestValidationError):
        said = []
        for err in e.errors():
            field = ".".join(str(x) for x in err.get("loc", ())[1:]) or "body"
            said.append(f"{field}: {err.get('msg', 'invalid').lower()}")
        return error_response(422, "; ".join(said), None, request.scope)

    def decoding(max_new_tokens: int, num_beams: int) -> Decoding:
        """The request's decoding options, checked as generate and the command line check them (generation/checks)."""
        if why := decoding_error(max_new_tokens, num_beams) or room_error(1, max_new_tokens, limit):
            raise ClientError(422, why)
        if num_beams > MAX_BEAMS:
            raise ClientError(422, f"num_beams must be at most {MAX_BEAMS} on this server, got {num_beams}")
        return Decoding(max_new_tokens, num_beams)

    def fits(rows: int, d: Decoding) -> None:
        """422 for a request whose rows x beams pass max_rows: one request never holds the worker for more than
        a few batches' time (requests are served in arrival order; this bounds what one of them can take)."""
        cap = opts.max_rows or 16 * opts.max_batch
        if rows * d.num_beams > cap:
            raise ClientError(422, f"{rows} rows x {d.num_beams} beams = {rows * d.num_beams}: at most {cap} per "
                                   "request on this server (--max-rows); send fewer at a time")

    def record_settings(d: Decoding) -> dict:
        return settings(fingerprint, opts.precision["dtype"], d.max_new_tokens, d.num_beams,
                        quantize=opts.precision.get("quantize"))

    def read(data: bytes, name: str) -> tuple[str, torch.Tensor | str]:
        """("sha256:...", (3, H, W) pixels or the reason there are none) of an upload, read as the command line
        reads a file: the same checks, the same reasons."""
        key = "sha256:" + hashlib.sha256(data).hexdigest()
        suffix = Path(name).suffix.lower()  # the reader names a video by it
        try:
            with tempfile.NamedTemporaryFile(suffix=suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else "") as f:
                f.write(data)
                f.flush()
                return key, processor(images=[f.name]).pixel_values[0]
        except Exception as e:  # noqa: BLE001 -- any unreadable upload is reported, never fatal
            return key, getattr(e, "reason", None) or " ".join(str(e).split()) or type(e).__name__

    async def load(upload: UploadFile, n: int) -> tuple[str, str, torch.Tensor | str]:
        """(name, "sha256:...", pixels or the reason they cannot be had), decoded off the event loop."""
        name = upload.filename or f"upload-{n}"
        metrics.read(1)
        return name, *await anyio.to_thread.run_sync(read, await upload.read(), name, limiter=reading)

    def prompt(question: str | None, d: Decoding) -> list[int] | str:
        """[CLS] (+ the question's tokens), or why the question cannot be asked with these options."""
        if question is None:
            return [tok.cls_id]
        if not question.strip():
            return "the question is empty"
        if len(question) > MAX_QUESTION_CHARS:
            return f"the question is {len(question)} characters long; at most {MAX_QUESTION_CHARS}"
        ids = processor.encode_text(question)[0][0].tolist()  # [CLS] + the question's tokens
        return room_error(len(ids), d.max_new_tokens, limit, what="the question") or ids

    async def run(job: Job, request: Request, deadline_s: float | None = None):
        """The job's results from the worker; 504 past the request's deadline (opts.deadline_s, or the client's
        lower deadline_s) and nothing if the client leaves: either way the job is cancelled, so that a job still
        queued never runs (a batch already running finishes; its result for this job is dropped)."""
        if deadline_s is not None and deadline_s <= 0:
            raise ClientError(422, f"deadline_s must be more than 0, got {deadline_s:g}")
        limit_s = min(deadline_s or opts.deadline_s, opts.deadline_s)
        try:
            future = batcher.submit(job)
            request.state.arrived()  # after the job is queued: the worker always sees it, coming or queued
        except QueueFull:
            raise ClientError(503, f"the server is busy: {opts.queue} requests are waiting (--queue); retry "
                                   "shortly", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except Closed:
            raise ClientError(503, "the server is shutting down", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        answer = asyncio.wrap_future(future)  # set by the batcher's thread
        gone = asyncio.ensure_future(disconnected(request))
        left = limit_s - (time.monotonic() - request.state.started)
        await asyncio.wait({answer, gone}, timeout=max(left, 0), return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if answer.done():
            return answer.result()
        answer.cancel()  # and so the job's future: the worker drops it (Batcher._work)
        if gone.done():
            raise ClientError(CLIENT_GONE, "the client closed the connection; its work was dropped")
        raise ClientError(504, f"no answer within the request's deadline of {limit_s:g} s (--deadline, deadline_s); "
                               "its work was dropped")

    # ------------------------------------------------------------ endpoints
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return FileResponse(PAGE / "docs.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "checkpoint": opts.name, "fingerprint": fingerprint,
                "arriving": arrivals.n, "queued": batcher.queue.qsize(), "running": batcher.running,
                "batches": batcher.batches,
                "max_batch": opts.max_batch, "max_wait_ms": opts.max_wait_ms,
                "image_cache": None if cache is None else {"size": cache.size, "images": len(cache.store),
                                                           "hits": cache.hits, "misses": cache.misses}}

    @app.get("/health/live")
    async def live():
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready(request: Request):
        if request.app.state.draining():
            return error_response(503, "the server is shutting down", None, request.scope)
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def scrape(request: Request):
        if (text := metrics.text()) is None:
            return error_response(501, INSTALL, None, request.scope)
        return Response(text[0], media_type=text[1])

    @app.post("/v1/caption")
    async def caption(request: Request, image: list[UploadFile] = File(..., description="one or more image files"),
                      max_new_tokens: int = Form(20, json_schema_extra=AT_LEAST_1), num_beams: int = Form(1, json_schema_extra=BEAMS),
                      deadline_s: float | None = Form(None, json_schema_extra=DEADLINE)):
        """One caption record per image, in upload order; an image that cannot be read is an error record."""
        only_fields(await request.form(), DECODING_FIELDS, {"image"})
        if len(image) > MAX_IMAGES:
            raise ClientError(422, f"{len(image)} images: at most {MAX_IMAGES} per request")
        d = decoding(max_new_tokens, num_beams)
        fits(len(image), d)
        s = record_settings(d)
        loaded = [await load(f, n) for n, f in enumerate(image)]
        good = [x for x in loaded if torch.is_tensor(x[2])]
        if not good:
            raise ClientError(422, "; ".join(f"{name}: {why}" for name, _, why in loaded))
        job = Job([px for *_, px in good], [Row(k, [tok.cls_id], None) for k in range(len(good))], d,
                  keys=[key for _, key, _ in good])
        done = iter(await run(job, request, deadline_s))
        return {"results": [record(name, key, next(done) if torch.is_tensor(px) else {"error": px}, s)
                            for name, key, px in loaded]}

    @app.post("/v1/vqa")
    async def vqa(request: Request, image: UploadFile = File(..., description="one image file"),
                  question: list[str] = Form(..., description="one or more questions"),
                  max_new_tokens: int = Form(20, json_schema_extra=AT_LEAST_1), num_beams: int = Form(1, json_schema_extra=BEAMS),
                  deadline_s: float | None = Form(None, json_schema_extra=DEADLINE)):
        """One answer record per question, in order; a question that cannot be asked is an error record."""
        only_fields(await request.form(), DECODING_FIELDS | {"image"}, {"question"})
        if len(question) > MAX_QUESTIONS:
            raise ClientError(422, f"{len(question)} questions: at most {MAX_QUESTIONS} per request")
        d = decoding(max_new_tokens, num_beams)
        fits(len(question), d)
        s = record_settings(d)
        name, key, px = await load(image, 0)
        if not torch.is_tensor(px):
            raise ClientError(422, f"{name}: {px}")
        prompts = [prompt(q, d) for q in question]
        rows = [Row(0, p, q) for p, q in zip(prompts, question) if isinstance(p, list)]
        if not rows:
            raise ClientError(422, "; ".join(dict.fromkeys(prompts)))
        done = iter(await run(Job([px], rows, d, keys=[key]), request, deadline_s))
        return {"results": [record(name, key, next(done) if isinstance(p, list) else {"question": q, "error": p}, s)
                            for p, q in zip(prompts, question)]}

    @app.post("/v1/explain")
    async def explain(request: Request, image: UploadFile = File(...), question: str | None = Form(None),
                      max_new_tokens: int = Form(20, json_schema_extra=AT_LEAST_1), method: str = Form("last", pattern="^(last|rollout)$"),
                      deadline_s: float | None = Form(None, json_schema_extra=DEADLINE)):
        """The greedy words, each with its heat map over the image patches (git_scratch.explain): "map" is the
        patch grid as rows, summing to 1; method "last" (the last layer's attention) or "rollout"."""
        only_fields(await request.form(), {"image", "question", "max_new_tokens", "method", "deadline_s"})
        if isinstance(model, OnnxGIT):
            raise ClientError(422, NEEDS_TORCH)
        d = decoding(max_new_tokens, 1)
        name, key, px = await load(image, 0)
        if not torch.is_tensor(px):
            raise ClientError(422, f"{name}: {px}")
        ids = prompt(question, d)
        if not isinstance(ids, list):
            raise ClientError(422, ids)

        def work():  # in the worker thread, which alone uses the image cache
            with torch.inference_mode():
                (feats,) = encode(model, [px], [key], 1, cache)  # (N, D): the page's caption has cached it
                return explain_words(model, tok, px[None].to(model.device, model.dtype),  # (1, 3, H, W)
                                     None if question is None else torch.tensor([ids]), method=method,
                                     max_new_tokens=d.max_new_tokens, image=feats[None])

        return {"words": await run(Job(alone=work), request, deadline_s)}

    return app


async def disconnected(request: Request) -> None:
    """Returns once the client has closed its connection (its body already read: receive() then waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def record(name: str, key: str, result: dict, s: dict) -> dict:
    """The command line's record for an upload: input, file, then the result (or its error), then settings."""
    return {"input": name, "file": key, **result, "settings": s}
