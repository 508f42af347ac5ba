"""`git-scratch serve` as the tests run it: a real server in a subprocess on a free port, and shapes images.

The server prints one line once its model is loaded, naming the URL (`--port 0`: any free port, so tests never
race for one); its socket listens before that, so a request made early waits in the backlog instead of failing.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from _cli_helpers import cli_command, cli_env

from git_scratch.data import shapes

DEMO = shapes.CHECKPOINT  # the shipped demo model: 5 MB, real words, and answers that are right


class Server:
    """`git-scratch serve --port 0 FLAGS` in a subprocess; .url once it serves, .stderr its lines so far."""

    def __init__(self, *flags, checkpoint=DEMO, log: Path | None = None):
        out = open(log, "w") if log else subprocess.DEVNULL  # the access lines (serve/guard.py)
        self.log = log
        self.proc = subprocess.Popen([*cli_command(), "serve", "-c", str(checkpoint), "--port", "0", *map(str, flags)],
                                     stdout=out, stderr=subprocess.PIPE, text=True, env=cli_env())
        self.stderr: list[str] = []
        first = self.proc.stderr.readline()  # blocks until the model is loaded (or the command failed)
        self.stderr.append(first)
        # the rest is read as it comes, so that a full pipe never blocks the server
        self.reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        if not first.startswith("serving "):
            self.proc.wait(30)
            self.reader.join(30)
            raise RuntimeError("the server did not start:\n" + "".join(self.stderr))
        self.url = first.split(" on ")[1].split("/ ")[0]  # "serving CKPT on http://127.0.0.1:PORT/ (the page..."

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        rc = self.proc.wait(60)
        self.reader.join(30)
        return rc


def error(r) -> str:
    """The error of a JSON error answer, checked to be the server's one shape: {"error", "request_id"}, the id
    that of the X-Request-ID header."""
    body = r.json()
    assert list(body) == ["error", "request_id"] and body["request_id"] == r.headers["x-request-id"], body
    return body["error"]


def shape_png(folder: Path, seed: int) -> Path:
    """A shapes-task image (96 x 96 PNG) of `seed`, past every training seed, saved as FOLDER/shape-SEED.png."""
    image, _, _ = shapes.sample(shapes.VAL_OFFSET + seed)
    path = folder / f"shape-{seed}.png"
    image.save(path)
    return path
