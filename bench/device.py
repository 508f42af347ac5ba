"""`python -m bench --device cuda` (or cpu): generation and training speed on one device, side by side with
transformers in one run, git_scratch eager and compiled (`generate(..., compile=True)`) as their own columns.

Per shape: the same random-init checkpoint both sides (workloads.checkpoint), loaded on the device in each
dtype. Each timing is the median of `repeats` runs after a warm-up, with the device synchronised around it.
Ids: float32 git_scratch must equal transformers, and the compiled path must equal the eager one, token for
token; bfloat16 and float16 ids are reported as their agreement with float32 (rows identical), never claimed
equal. Peak memory: torch.cuda.max_memory_allocated per workload (CUDA only). On a machine without the
device asked for, it says so and exits 0: nothing CUDA-only runs on a CPU machine.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from .machine import machine_info
from .workloads import checkpoint, pixels, quiet_transformers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> tuple[float, object]:
    """(median seconds of `repeats` runs, the output of the warm-up run before them)."""
    out = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peak(fn, device) -> float | None:
    """GiB allocated at most while fn runs (CUDA), else None."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def rows_equal(a: torch.Tensor, b: torch.Tensor) -> int:
    if a.shape != b.shape:
        n = min(a.shape[1], b.shape[1])
        a, b = a[:, :n], b[:, :n]
    return int((a == b).all(dim=1).sum())


def run_shape(shape: str, device: torch.device, args, log) -> dict:
    from transformers import GitForCausalLM

    import git_scratch

    hf_dir, our_dir = checkpoint(shape, False, args.out, log=log)
    quiet_transformers()
    res, new = {"rows": []}, args.new_tokens
    cfg = git_scratch.load(our_dir, device="cpu").config

    def row(name, **kw):
        res["rows"].append({"workload": name, **kw})
        log(f"  {shape} {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in kw.items()))

    ref_ids = {}
    for dname in args.dtypes:
        dt = DTYPES[dname]
        if device.type == "cpu" and dt == torch.float16:
            continue
        ours = git_scratch.load(our_dir, device=device, dtype=dt)
        theirs = GitForCausalLM.from_pretrained(hf_dir, dtype=dt).to(device).eval()
        torch.nn.Module.train(theirs, False)
        for batch in args.batches:
            px = pixels(cfg, batch).to(device, dt)

            def gen_ours(compile=False, n=new):
                return ours.generate(px, max_new_tokens=n, min_new_tokens=n, compile=compile)

            def gen_theirs(n=new):
                with torch.no_grad():
                    return theirs.generate(pixel_values=px, max_new_tokens=n, min_new_tokens=n, do_sample=False)

            t_o, ids_o = timed(gen_ours, device, args.repeats)
            t_c, ids_c = timed(lambda: gen_ours(True), device, args.repeats)
            t_t, ids_t = timed(gen_theirs, device, args.repeats)
            agree = {"ours = transformers": f"{rows_equal(ids_o, ids_t)}/{batch}",
                     "compiled = eager": f"{rows_equal(ids_c, ids_o)}/{batch}"}
            if dname == "float32":
                ref_ids[batch] = ids_o
            elif batch in ref_ids:
                agree[f"{dname} = float32"] = f"{rows_equal(ids_o, ref_ids[batch])}/{batch}"
            row(f"greedy, batch {batch}, {new} new, {dname}", ours_s=t_o, compiled_s=t_c, transformers_s=t_t,
                ours_img_s=batch / t_o, compiled_img_s=batch / t_c, transformers_img_s=batch / t_t,
                compiled_vs_transformers=t_t / t_c, **agree,
                peak_gib_ours=peak(gen_ours, device), peak_gib_compiled=peak(lambda: gen_ours(True), device),
                peak_gib_transformers=peak(gen_theirs, device))
            if batch == 1:  # the decode step: (time of long - time of short) / extra steps
                long_n = new + args.extra_steps
                step = {}
                for side, f in (("ours", lambda n: gen_ours(False, n)), ("compiled", lambda n: gen_ours(True, n)),
                                ("transformers", lambda n: gen_theirs(n))):
                    short, _ = timed(lambda: f(new), device, args.repeats)
                    long, _ = timed(lambda: f(long_n), device, args.repeats)
                    step[f"{side}_ms"] = (long - short) / args.extra_steps * 1e3
                row(f"decode step, batch 1, {dname}", **step)
        if "beam" in args.workloads:
            px = pixels(cfg, args.beam_batch).to(device, dt)
            b_o, ids_o = timed(lambda: ours.generate(px, max_new_tokens=new, min_new_tokens=new, num_beams=4),
                               device, args.repeats)
            b_c, ids_c = timed(lambda: ours.generate(px, max_new_tokens=new, min_new_tokens=new, num_beams=4,
                                                     compile=True), device, args.repeats)
            with torch.no_grad():
                b_t, ids_t = timed(lambda: theirs.generate(pixel_values=px, max_new_tokens=new, min_new_tokens=new,
                                                           num_beams=4, do_sample=False), device, args.repeats)
            row(f"beam 4, batch {args.beam_batch}, {dname}", ours_s=b_o, compiled_s=b_c, transformers_s=b_t,
                **{"ours = transformers": f"{rows_equal(ids_o, ids_t)}/{args.beam_batch}",
                   "compiled = eager": f"{rows_equal(ids_c, ids_o)}/{args.beam_batch}"})
        if "train" in args.workloads and dname != "float16":
            tb = args.train_batch
            px32 = pixels(cfg, tb).to(device)
            ids = torch.randint(min(1000, cfg.text.vocab_size // 2), cfg.text.vocab_size, (tb, 20), generator=torch.Generator().manual_seed(3))
            ids[:, 0] = cfg.text.bos_id
            ids = ids.to(device)
            o32 = git_scratch.load(our_dir, device=device)
            t32 = GitForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device)
            o32.train()
            torch.nn.Module.train(t32, True)  # transformers 5.25's .train() fetches hub kernels
            auto = dname == "bfloat16"

            def step_o():
                o32.zero_grad(set_to_none=True)
                with torch.autocast(device.type, torch.bfloat16, enabled=auto):
                    loss = o32(px32, ids, labels=ids).loss
                loss.backward()
                return loss.detach()

            def step_t():
                t32.zero_grad(set_to_none=True)
                with torch.autocast(device.type, torch.bfloat16, enabled=auto):
                    loss = t32(pixel_values=px32, input_ids=ids, labels=ids).loss
                loss.backward()
                return loss.detach()

            s_o, l_o = timed(step_o, device, args.repeats)
            s_t, l_t = timed(step_t, device, args.repeats)
            row(f"training step, batch {tb}, {'bf16 autocast' if auto else 'float32'}", ours_s=s_o, transformers_s=s_t,
                ratio=s_o / s_t, loss_rel_err=abs(float(l_o) - float(l_t)) / abs(float(l_t)))
            del o32, t32
        del ours, theirs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def shapes_training(device: torch.device, args, log) -> float:
    """Built-in shapes training (the demo model's shape, batch 64), examples per second, as `train` runs it."""
    from git_scratch import GIT, GitConfig, init_weights
    from git_scratch.data.datasets import ShapesDataset
    from git_scratch.data.shapes import processor
    from git_scratch.training.loop import TrainOptions, train

    model = init_weights(GIT(GitConfig.preset("shapes-tiny")), std=0.02).to(device)
    steps, bs = args.shapes_steps, 64
    opts = TrainOptions(steps=steps, batch_size=bs, lr=1e-3, warmup=5, save_every=10**6, log_every=10**6,
                        bf16="off", progress=False, augment=False)
    t0 = time.perf_counter()
    train(model, ShapesDataset(steps * bs, "both"), processor(), opts, args.out / "shapes-train")
    sync(device)
    rate = steps * bs / (time.perf_counter() - t0)
    log(f"  shapes training: {rate:.0f} examples/s")
    return rate


def demo_agreement(device: torch.device, n: int, log) -> dict:
    """The shipped demo model in float32 and bfloat16 on this device: how many of the captions and answers on
    n held-out images are the same text."""
    import git_scratch
    from git_scratch.data import shapes
    from git_scratch.evaluation import demo

    proc = git_scratch.Processor.from_pretrained(shapes.CHECKPOINT)
    seeds = range(demo.FRESH, demo.FRESH + n)
    recs = {d: demo.predict(git_scratch.load(shapes.CHECKPOINT, device=device, dtype=d), proc, seeds)
            for d in ("float32", "bfloat16")}
    same = sum(a["text"] == b["text"] for a, b in zip(recs["float32"], recs["bfloat16"]))
    out = {"outputs": len(recs["float32"]), "bfloat16 = float32": same,
           "exact float32": demo.score(recs["float32"]), "exact bfloat16": demo.score(recs["bfloat16"])}
    log(f"  demo model, {n} images: bfloat16 = float32 on {same} of {len(recs['float32'])} captions and answers")
    return out


def no_sync_in_step(device: torch.device, log) -> dict:
    """torch.cuda.set_sync_debug_mode("error") around decode steps, eager and from the graph: a step that made
    the host wait for the GPU would raise."""
    import git_scratch
    from git_scratch import GIT, GitConfig, init_weights
    from git_scratch.generation.compiled import compiled_decoder
    from git_scratch.generation.decoders import Cached

    model = init_weights(GIT(GitConfig.preset("tiny")), std=0.1).to(device).eval()
    image = model.encode_image(torch.randn(2, 3, 32, 32, device=device)).detach()
    out = {}
    for name, make in (("eager", Cached), ("graph", compiled_decoder)):
        with torch.no_grad():
            dec = make(model, image, 4, model.mask(image.shape[1], 8, device=device))
            dec.prefill(torch.ones(4, 2, dtype=torch.long, device=device), torch.full((4,), 2, device=device))
            tok, pos = torch.ones(4, dtype=torch.long, device=device), torch.full((4,), 2, device=device)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for i in range(3):
                    dec.decode_step(tok, pos + i)
                out[name] = "no synchronisation"
            except RuntimeError as e:
                out[name] = f"synchronised: {e}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
    log(f"  sync debug mode inside decode_step: {out}")
    return out


def main(args, log=print) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench --device cuda: no CUDA device on this machine; nothing CUDA-only was run")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": str(device),
              "machine": machine_info(), "shapes": {}}
    log(f"machine: {report['machine']}")
    try:
        for shape in args.shapes:
            report["shapes"][shape] = run_shape(shape, device, args, log)
        if device.type == "cuda":
            report["sync_in_step"] = no_sync_in_step(device, log)
        report["demo_bf16"] = demo_agreement(device, args.demo_images, log)
        if "shapes-train" in args.workloads:
            report["shapes_training_examples_s"] = shapes_training(device, args, log)
    finally:
        path = args.out / f"device-{device.type}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(report, indent=1, default=str))
        log(f"wrote {path}")
    return 0
