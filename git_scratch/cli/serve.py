"""`git-scratch serve`: its parser, and the command: load a checkpoint once, serve it over HTTP (serve/app.py).

The port is bound before the model loads, so a port in use is one error line, exit 2, with nothing loaded; the
checkpoint is loaded as `caption` loads it (batch.load_checkpoint: the same checks and messages). Then uvicorn
serves until SIGTERM or Ctrl-C: it stops taking connections, lets every request in flight finish (the batcher
drains its queue), and the command exits 143 (130 for Ctrl-C) with a line saying so.
FastAPI and uvicorn are an optional extra, imported only when the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..constants import EXIT_USAGE
from .options import add_model_options, open_checkpoint
from .stops import stopped_code, stopped_name

EPILOG = """\
examples:
  git-scratch serve -c microsoft/git-base-coco                 # http://127.0.0.1:8000/ (the page), /docs (the API)
  git-scratch serve                                            # the shipped demo model (shapes), to try it
  git-scratch serve -c ckpt/git-base-vqav2 --max-batch 16 --max-wait-ms 20 --port 9000
  curl -F image=@cat.jpg http://127.0.0.1:8000/v1/caption
  curl -F image=@cat.jpg -F question='what is the cat doing?' http://127.0.0.1:8000/v1/vqa

endpoints:
  POST /v1/caption   form fields: image (repeat for several), max_new_tokens, num_beams -> {"results": [...]}
  POST /v1/vqa       form fields: image, question (repeat for several), max_new_tokens, num_beams
  POST /v1/explain   form fields: image, question (optional), max_new_tokens -> {"words": [{token, id, map}]}
  GET  /health       200 once the model is loaded; /health/live, /health/ready (503 while draining)
  GET  /metrics      Prometheus text (needs prometheus_client); GET / the page; GET /docs the OpenAPI page
  Each result is the record `caption --json` / `vqa --json` prints ("input": the upload's file name, "file":
  "sha256:" + its digest). Errors are {"error": "...", "request_id": "..."}: 400 a bad Host or framing, 401 no
  API key, 403 a cross-origin POST, 408 a header or body too slow, 413 over --max-upload-mb, 422 a bad request
  or nothing in it readable, 503 (with Retry-After) when --queue requests wait, or past --max-connections,
  504 past --deadline (or the request's deadline_s). A client that leaves: its queued work never runs.

memory: an image is refused from its header when over --max-pixels (default 16M), before it is decoded. At the
  limit, reading one costs about 0.3 GB at its peak, and two are read at once: measured (demo model, 2-core
  EPYC), four concurrent 16 Mpx RGBA uploads raised the peak RSS by 0.66 GB (one: 0.31 GB; one 1 pixel over the
  limit: nothing). Budget about 19 MB per million pixels x 2 above the model, plus --max-upload-mb per upload
  in flight; halve --max-pixels to halve it.

exit codes:
  2    usage error, the port cannot be bound, the checkpoint cannot be loaded, or FastAPI/uvicorn missing
  130  stopped by Ctrl-C, 143 by SIGTERM: both after answering every request in flight
"""


def _at_least(low, kind=int):
    def parse(s: str):
        v = kind(s)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {s}")
        return v

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'abc'" names the type by this
    return parse


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `git-scratch serve` on the CLI's subparsers."""
    p = sub.add_parser("serve", help="serve captions and answers over HTTP, batched, with a page to try it",
                       description="Serve a checkpoint over HTTP: captions and answers as JSON records, concurrent "
                                   "requests decoded together in batches (each image encoded once), and a page at / "
                                   "to try it in a browser. Binds 127.0.0.1 unless --host says otherwise.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=_at_least(0), default=8000, help="default 8000; 0: any free port (printed)")
    p.add_argument("--max-batch", type=_at_least(1), default=8, metavar="N",
                   help="most rows (image + prompt pairs) decoded together (default 8; 1: no batching)")
    p.add_argument("--max-rows", type=_at_least(1), metavar="N",
                   help="most rows x beams one request may ask for (default 16 x --max-batch): more is a 422, so that "
                        "one request cannot hold the worker long; requests are served in arrival order")
    p.add_argument("--max-wait-ms", type=_at_least(0, float), default=100.0, metavar="MS",
                   help="the longest a batch waits for more requests once the first has come (default 100); it "
                        "waits only while others are still being received, so a lone request starts at once")
    p.add_argument("--max-upload-mb", type=_at_least(0.001, float), default=20.0, metavar="MB",
                   help="largest request body, MiB (default 20); larger ones get 413 before they are read")
    p.add_argument("--queue", type=_at_least(1), default=64, metavar="N",
                   help="requests that may wait for the model (default 64); more get 503 with Retry-After")
    p.add_argument("--max-pixels", type=_at_least(1), default=16_000_000, metavar="N",
                   help="refuse images with more than N pixels, from their header, before decoding (default 16M: "
                        "~0.3 GB at worst to read one, two at a time; see memory below)")
    g = p.add_argument_group("limits on clients (every wait bounded)")
    g.add_argument("--header-timeout", type=_at_least(0.1, float), default=10.0, metavar="S",
                   help="a connection's request header must come whole within S seconds (default 10), else 408")
    g.add_argument("--body-timeout", type=_at_least(0.1, float), default=30.0, metavar="S",
                   help="each part of a request body must come within S seconds (default 30), else 408")
    g.add_argument("--timeout-keep-alive", type=_at_least(0.1, float), default=5.0, metavar="S",
                   help="an idle connection between requests is closed after S seconds (default 5)")
    g.add_argument("--max-connections", type=_at_least(1), default=256, metavar="N",
                   help="connections open at once (default 256); more are answered 503 and closed")
    g.add_argument("--deadline", type=_at_least(0.1, float), default=60.0, metavar="S",
                   help="a request not answered within S seconds gets 504 and its work is dropped (default 60); a "
                        "client may ask for less with the form field deadline_s")
    g.add_argument("--shutdown-timeout", type=_at_least(0, float), default=30.0, metavar="S",
                   help="after SIGTERM, requests in flight have S seconds to finish (default 30); then the rest "
                        "are cancelled and the process exits")
    g = p.add_argument_group("who may ask")
    g.add_argument("--api-key", metavar="KEY",
                   help="require this key on /v1/ and /metrics (Authorization: Bearer KEY or X-API-Key: KEY); "
                        "also from $GIT_SCRATCH_API_KEY; /health and the page stay open")
    g.add_argument("--api-key-file", metavar="FILE", help="read the key from FILE (its first line)")
    g.add_argument("--allowed-hosts", metavar="H,H", help="Host header values served (default: the bound host, "
                   "localhost, 127.0.0.1, ::1; '*': any)")
    g.add_argument("--cors-origins", metavar="O,O", default="",
                   help="other origins whose pages may call the API, e.g. https://app.example (default none)")
    p.add_argument("--image-cache", type=_at_least(0), default=64, metavar="N",
                   help="keep the encodings of the last N images by the hash of their bytes, so that questions about "
                        "a photo already seen skip the vision encoder (default 64, ~0.6 MB an image at git-base; "
                        "0: none)")
    add_model_options(p, default="demo")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """`git-scratch serve` from its parsed command line; the exit code once it is stopped."""
    if args.port > 65535:
        print(f"error: --port {args.port}: a port is 0 to 65535", file=sys.stderr)
        return EXIT_USAGE
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401 -- FastAPI's form parsing
        import uvicorn
    except ImportError as e:
        print(f"error: git-scratch serve needs FastAPI, uvicorn and python-multipart (missing: {e.name}): "
              "pip install 'git_scratch[serve]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = listen(args.host, args.port)
    except OSError as e:
        print(f"error: --host {args.host} --port {args.port}: cannot listen there: {e.strerror or e}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        key = api_key(args)
    except OSError as e:
        print(f"error: --api-key-file {args.api_key_file}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    with sock:
        from ..serve.app import ServeOptions, create_app
        from ..serve.guard import Limits, guarded_protocol

        try:
            opened = off_main(lambda: open_checkpoint(args, max_pixels=args.max_pixels))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        model = opened.model
        host, port = sock.getsockname()[:2]
        limits = Limits(args.header_timeout, args.body_timeout, args.max_connections, key,
                        split(args.allowed_hosts) or [args.host, host, "localhost", "127.0.0.1", "::1"],
                        split(args.cors_origins))
        shown = Path(args.checkpoint).name if Path(args.checkpoint).exists() else args.checkpoint  # no local path
        opts = ServeOptions(str(opened.path), shown, opened.precision.settings(), args.max_batch, args.max_wait_ms,
                            args.queue, args.max_upload_mb, args.image_cache, limits, args.deadline,
                            args.max_rows)
        app = create_app(model, opened.processor, opts)
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        print(f"serving {args.checkpoint} on {url}/ (the page; the API: {url}/docs), device {model.device}, "
              f"max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, queue {args.queue}, image cache "
              f"{args.image_cache}", file=sys.stderr,
              flush=True)
        if key is None and not loopback(host):
            print(f"warning: serving on {host} with no API key: anyone who can reach this address can use it "
                  "(--api-key)", file=sys.stderr, flush=True)
        if args.allowed_hosts is None and host in ("0.0.0.0", "::"):
            print(f"warning: only requests naming {', '.join(limits.allowed_hosts[2:])} in their Host header are "
                  "served: name this machine's addresses with --allowed-hosts (or '*')", file=sys.stderr, flush=True)
        access = logging.getLogger("git_scratch.serve")
        access.setLevel(logging.INFO)
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        access.addHandler(handler)
        server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=False, http=guarded_protocol(limits),
                                               timeout_keep_alive=args.timeout_keep_alive,
                                               timeout_graceful_shutdown=args.shutdown_timeout))
        app.state.draining = lambda: server.should_exit
        try:
            server.run(sockets=[sock])  # on SIGTERM/SIGINT: in-flight requests finish, then the signal is re-raised
        except KeyboardInterrupt as e:  # stops.Terminated for SIGTERM
            print(f"{stopped_name(e)}: every request in flight was answered; stopped", file=sys.stderr)
            return stopped_code(e)
    return EXIT_USAGE if server.started is False else 0


def off_main(f, *args):
    """f(*args) in a thread that then ends, so that the main thread never runs parallel torch work (loading casts
    weights in parallel). Why: libgomp keeps a team of OpenMP threads for each thread that has run parallel work,
    for as long as that thread lives; with the main thread's team beside the batcher's, it manages more threads
    than there are cores and stops letting them spin between parallel regions, so each small op of a decode step
    waits for a thread to wake. Measured (2-core AMX Xeon, --dtype bfloat16-vision, git-base): a caption in the
    batcher's thread took 82 ms to encode and 506 to decode after a load in the main thread, 58 and 356 after
    one here. The batcher is then the only thread with a team."""
    with ThreadPoolExecutor(1, thread_name_prefix="git-scratch-load") as pool:
        return pool.submit(f, *args).result()  # the thread ends with the `with`, and its team with it


def api_key(args) -> str | None:
    """The key from --api-key, else --api-key-file, else $GIT_SCRATCH_API_KEY; None: no key. OSError: no file."""
    if args.api_key:
        return args.api_key
    if args.api_key_file:
        return (Path(args.api_key_file).read_text().splitlines() or [""])[0].strip() or None
    return os.environ.get("GIT_SCRATCH_API_KEY") or None


def split(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), or OSError (in use, no such address)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=2048)
