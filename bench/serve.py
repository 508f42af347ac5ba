"""`git-scratch serve` under load: real concurrent HTTP clients against a server on 127.0.0.1, batching on and off.

    python -m bench.serve                                  # git-base shape, random weights (built once), CPU
    python -m bench.serve --preset shapes-tiny --requests 24 --images 8   # a quick check that it runs
    python -m bench.serve -c ckpt/git-base-coco --device cuda

Method: a random checkpoint of the preset shape (git_scratch's `init`, std 0.1 so the words depend on the image,
GIT's real BERT vocabulary), built once under bench/results/serve-ckpt/. `--images` distinct random photos-to-be
(smooth colour fields, 320 x 240 PNGs). The command line captions each once (`git-scratch caption --json`): the
records every response must equal. Then, for each server mode (batching on: --max-batch B --max-wait-ms W; off:
--max-batch 1 --max-wait-ms 0; both --image-cache 0, since every row sends the same images again and this measures
batching, not the cache), one `git-scratch serve` subprocess, and for each client count C in --clients:
`--requests` single-image POST /v1/caption requests from C threads (one httpx client each, requests handed out
in turn), after C warm-up requests. Reported: images/s (requests / wall time), p50 and p95 latency per request,
the mean images per batch the server ran (GET /health's batch count),
how many responses equal the command line's record (text and ids exactly, score within 1e-4 relative: batched
float32 products round differently in the last bits), and how many were lost (no 200). Server and clients
share the machine: the clients' own CPU time is small (one HTTP request per caption) but counted in the wall.

Results: Markdown on stdout, JSON + Markdown under bench/results/serve-<time>.*
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from git_scratch.constants import RUN_DTYPES

from .machine import OtherLoad, save_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SCORE_REL = 1e-4  # see the module docstring


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def checkpoint(preset: str, log=log) -> Path:
    """A random `preset` checkpoint with GIT's BERT vocabulary, built once (init_checkpoint, seed 0, std 0.1)."""
    from git_scratch.training.init_checkpoint import init_checkpoint

    d = RESULTS / "serve-ckpt" / preset
    if not (d / "model.safetensors").is_file():
        log(f"building a random {preset} checkpoint in {d} ...")
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(d.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        from git_scratch.config import GitConfig
        from git_scratch.data.shapes import VOCAB_DIR

        # GIT's BERT vocabulary where the shape has its size (init's default), else the shapes task's (shapes-tiny)
        small = GitConfig.preset(preset).text.vocab_size != 30522
        init_checkpoint(tmp, preset, seed=0, std=0.1, tokenizer_from=VOCAB_DIR if small else None)
        tmp.rename(d)
    return d


def photos(folder: Path, n: int) -> list[Path]:
    """n distinct smooth random colour fields, 320 x 240 PNG (the processor resizes and crops them)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        g = np.random.default_rng(i)
        small = g.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        path = folder / f"photo-{i:03d}.png"
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(path)
        out.append(path)
    return out


def cli_records(ckpt: Path, paths: list[Path], flags: list[str]) -> dict[str, dict]:
    """{file name: the record `git-scratch caption --json` prints} for every path, in one run."""
    r = subprocess.run([sys.executable, "-m", "git_scratch.cli", "caption", *map(str, paths), "-c", str(ckpt),
                        "--json", "--no-progress", *flags], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"the command line failed:\n{r.stderr}")
    return {Path(rec["input"]).name: rec for rec in map(json.loads, r.stdout.splitlines())}


class Server:
    """`git-scratch serve --port 0 FLAGS` in a subprocess; .url once its model is loaded."""

    def __init__(self, ckpt: Path, flags: list[str]):
        cmd = [sys.executable, "-m", "git_scratch.cli", "serve", "-c", str(ckpt), "--port", "0", "--image-cache", "0"]
        self.proc = subprocess.Popen([*cmd, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        first = self.proc.stderr.readline()
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # drain
        if not first.startswith("serving "):
            raise SystemExit(f"the server did not start: {first}")
        self.url = first.split(" on ")[1].split("/ ")[0]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def same(rec: dict, want: dict) -> bool:
    return (rec.get("text"), rec.get("ids")) == (want["text"], want["ids"]) and \
        abs(rec["score"] - want["score"]) <= SCORE_REL * max(1.0, abs(want["score"]))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a running process has used so far; Linux's /proc, 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (stat fields 14, 15)


def load(url: str, paths: list[Path], want: dict, clients: int, requests: int, fields: dict, server_pid: int) -> dict:
    """`requests` captions from `clients` threads; images/s, latencies, and every answer checked."""
    import httpx

    data = {p.name: p.read_bytes() for p in paths}
    names = list(data)
    todo = list(range(requests))
    lock = threading.Lock()
    latencies, bad, lost = [], [], []
    warm = threading.Barrier(clients + 1)  # every client has connected and been answered once: the clock starts

    def client():
        with httpx.Client(timeout=600) as http:
            http.post(url + "/v1/caption", files=[("image", (names[0], data[names[0]], "image/png"))], data=fields)
            warm.wait()
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                name = names[i % len(names)]
                t0 = time.perf_counter()
                try:
                    r = http.post(url + "/v1/caption", files=[("image", (name, data[name], "image/png"))], data=fields)
                except httpx.HTTPError as e:
                    lost.append(f"{name}: {e!r}")
                    continue
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    lost.append(f"{name}: {r.status_code} {r.text[:200]}")
                    continue
                latencies.append(dt)
                (rec,) = r.json()["results"]
                if not same(rec, want[name]):
                    bad.append((name, rec.get("text"), want[name]["text"]))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    warm.wait()
    batches = httpx.get(url + "/health").json()["batches"]
    other, served = OtherLoad(), cpu_seconds(server_pid)
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    batches = httpx.get(url + "/health").json()["batches"] - batches
    # the machine's busy share, less this process's and the server's own (OtherLoad counts only children that ended)
    share = other.fraction()
    if share is not None:
        share = max(0.0, share - (cpu_seconds(server_pid) - served) / (wall * (os.cpu_count() or 1)))
    p95 = statistics.quantiles(latencies, n=20, method="inclusive")[18] if len(latencies) > 1 else latencies[0]
    return {"clients": clients, "requests": requests, "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1), "p95_ms": round(1000 * p95, 1),
            "images_per_batch": round(len(latencies) / max(batches, 1), 1),
            "identical": requests - len(bad) - len(lost), "lost": len(lost), "mismatches": bad[:5],
            "errors": lost[:5], "other_load": share}


def markdown(run: dict) -> str:
    m = run["machine"]
    lines = [f"git-scratch serve, {run['checkpoint']}, {run['device']}, {run.get('dtype', 'float32')}; "
             f"CPU: {m['cpu']['model']} (family/model {m['cpu']['family_model']}, {', '.join(m['cpu']['flags'])}), "
             f"{m['cores']} cores, torch {m['torch']}; {run['requests']} single-image caption requests per row, "
             f"max_new_tokens {run['max_new_tokens']}",
             "",
             "| server | clients | images/s | p50 latency (ms) | p95 latency (ms) | images per batch | identical to the CLI "
             "| lost | other load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode, rows in run["modes"].items():
        for r in rows:
            other = "—" if r["other_load"] is None else f"{r['other_load']:.0%}"
            lines.append(f"| {mode} | {r['clients']} | {r['images_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
                         f"{r['images_per_batch']} | "
                         f"{r['identical']} / {r['requests']} | {r['lost']} | {other} |")
    on, off = run["modes"].get("batching on"), run["modes"].get("batching off")
    if on and off:
        lines += ["", "batching on / off, images/s: " + ", ".join(
            f"{a['clients']} client(s) {a['images_per_s'] / b['images_per_s']:.2f}x" for a, b in zip(on, off))]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="git-base", help="random checkpoint shape (default git-base)")
    p.add_argument("-c", "--checkpoint", help="serve this checkpoint instead of a random preset")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=64, help="measured requests per row (default 64)")
    p.add_argument("--images", type=int, default=32, help="distinct images (default 32)")
    p.add_argument("--max-batch", type=int, default=16, help="batching on: --max-batch (default 16)")
    # serve's default: on a 2-core CPU 16 uploads take ~50-100 ms to be received and decoded; a shorter wait
    # splits a burst of 16 into two batches that then stay out of step (measured: 8 per batch at 10 ms, 16 at 100)
    p.add_argument("--max-wait-ms", type=float, default=100, help="batching on: --max-wait-ms (default 100)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=RUN_DTYPES,
                   help="the server's and the command line's --dtype (default float32)")
    a = p.parse_args(argv)
    from .machine import machine_info

    ckpt = Path(a.checkpoint) if a.checkpoint else checkpoint(a.preset)
    RESULTS.mkdir(exist_ok=True)
    paths = photos(RESULTS / "serve-photos", a.images)
    log(f"the command line's records for {len(paths)} images ...")
    t = time.perf_counter()
    want = cli_records(ckpt, paths, ["--max-new-tokens", str(a.max_new_tokens), "--device", a.device,
                                     "--dtype", a.dtype])
    log(f"  {time.perf_counter() - t:.1f} s")
    fields = {"max_new_tokens": str(a.max_new_tokens)}
    modes = {"batching on": ["--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms)],
             "batching off": ["--max-batch", "1", "--max-wait-ms", "0"]}
    run = {"checkpoint": str(ckpt) if a.checkpoint else f"random {a.preset}", "device": a.device, "dtype": a.dtype,
           "requests": a.requests, "max_new_tokens": a.max_new_tokens, "machine": machine_info(),
           "modes": {}, "flags": modes}
    for mode, flags in modes.items():
        server = Server(ckpt, [*flags, "--device", a.device, "--dtype", a.dtype, "--queue", "1024"])
        try:
            for c in a.clients:
                r = load(server.url, paths, want, c, a.requests, fields, server.proc.pid)
                log(f"{mode}, {c} client(s): {r['images_per_s']} images/s, p50 {r['p50_ms']} ms, "
                    f"p95 {r['p95_ms']} ms, identical {r['identical']}/{r['requests']}, lost {r['lost']}"
                    + (f" mismatches {r['mismatches']}" if r["mismatches"] else "")
                    + (f" errors {r['errors']}" if r["errors"] else ""))
                run["modes"].setdefault(mode, []).append(r)
        finally:
            server.stop()
    md = markdown(run)
    print(md)
    save_report(RESULTS, "serve", run, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
