"""What the benchmark runs: one random-init checkpoint per shape, and the workloads timed on it.

Each workload is the same job written twice, once per side, on the same weights and the same inputs:
`ours(model, inputs)` for git_scratch, `theirs(model, inputs)` for transformers, and `same(a, b)` says
whether the two outputs agree (token ids must be identical; a speed-up with other ids does not count).
Generation always forces its length (min_new_tokens = max_new_tokens) so EOS cannot end one side early.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .ties import rows

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from reference import SHAPES  # noqa: E402  (the HF GitConfig kwargs of each published shape)

INIT = 0.1  # initializer_range, vision and text: at transformers' 0.02 every image yields the same words
SEED = 0
VIDEO_FRAMES = 6


# ---------------------------------------------------------------- checkpoints
def hf_kwargs(shape: str, video: bool) -> dict:
    kw = json.loads(json.dumps(SHAPES[shape]))  # deep copy
    kw["vision_config"] = {**kw.get("vision_config", {}), "initializer_range": INIT}
    kw["initializer_range"] = INIT
    if video:
        kw["num_image_with_embedding"] = VIDEO_FRAMES
    return kw


def checkpoint(shape: str, video: bool, root: Path, rebuild: bool = False, log=print) -> tuple[Path, Path]:
    """(hf_dir, our_dir) for a shape: a random-init GitForCausalLM saved by transformers, and our conversion.

    Built once and kept under `root` (keyed by the build arguments), since git-large takes a while.
    """
    import transformers
    from transformers import GitConfig, GitForCausalLM

    from git_scratch.convert import convert

    quiet_transformers()
    kw = hf_kwargs(shape, video)
    stamp = {"kwargs": kw, "seed": SEED, "transformers": transformers.__version__}
    d = root / (shape + ("-video" if video else ""))
    hf_dir, our_dir = d / "hf", d / "ours"
    if not rebuild and (d / "build.json").is_file() and json.loads((d / "build.json").read_text()) == stamp:
        return hf_dir, our_dir
    log(f"building {d.name}: random-init transformers GitForCausalLM, saving, converting ...")
    torch.manual_seed(SEED)
    hf = GitForCausalLM(GitConfig(**kw)).eval()
    hf.save_pretrained(hf_dir)
    del hf
    convert(hf_dir, our_dir)
    (d / "build.json").write_text(json.dumps(stamp, indent=1))
    return hf_dir, our_dir


# git_scratch's other modes (`python -m bench --modes`): load's arguments for each, beside the float32 default.
# int8-bf16vision is what `--quantize int8 --dtype auto` runs where bfloat16 is fast (AMX / AVX512-BF16 CPUs).
MODES = {"int8": {"quantize": "int8"}, "int8-bf16vision": {"quantize": "int8", "dtype": "bfloat16"},
         "bfloat16": {"dtype": "bfloat16"}, "bfloat16-vision": {"dtype": "bfloat16-vision"}}
MODE_NAMES = {"int8": "int8 (decoder Linears and LM head in int8, git_scratch/quantize.py; vision float32)",
              "int8-bf16vision": "int8-bf16vision (int8 as before, the vision encoder in bfloat16: "
                                 "load(quantize='int8', dtype='bfloat16'))",
              "bfloat16": "bfloat16 (every weight, load(dtype='bfloat16'))",
              "bfloat16-vision": "bfloat16-vision (the vision encoder in bfloat16, one image a call, the decoder "
                                 "float32: load(dtype='bfloat16-vision'))"}


def load_ours(our_dir: Path, dtype=None, quantize=None):
    import git_scratch

    return git_scratch.load(our_dir, device="cpu", dtype=dtype, quantize=quantize)


def load_mode(our_dir: Path, mode: str):
    return load_ours(our_dir, **MODES[mode])


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_theirs(hf_dir: Path):
    from transformers import GitForCausalLM

    quiet_transformers()

    return GitForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


# ---------------------------------------------------------------- inputs
def pixels(cfg, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frames = (cfg.n_frames,) if cfg.n_frames else ()
    size = cfg.vision.image_size
    return torch.randn(batch, *frames, 3, size, size, generator=g)


def prompt(cfg, batch: int, length: int, seed: int = 2) -> torch.Tensor:
    """[CLS] then random word ids (a question, say)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, cfg.text.vocab_size, (batch, length), generator=g)
    ids[:, 0] = cfg.text.bos_id
    return ids


# ---------------------------------------------------------------- the two sides
def gen_ours(model, px=None, ids=None, new=20, beams=1, image=None):
    return model.generate(
        px, input_ids=ids, max_new_tokens=new, min_new_tokens=new, num_beams=beams, image=image
    )


def gen_theirs(model, px, ids, new=20, beams=1):
    return model.generate(
        pixel_values=px, input_ids=ids, max_new_tokens=new, min_new_tokens=new, num_beams=beams, do_sample=False
    )


def same_ids(a, b) -> tuple[bool, str]:
    rows_a, rows_b = rows(a), rows(b)
    if len(rows_a) != len(rows_b):
        return False, f"{len(rows_a)} rows vs {len(rows_b)}"
    differ = sum(not (x.shape == y.shape and torch.equal(x, y)) for x, y in zip(rows_a, rows_b))
    if differ:
        return False, f"token ids DIFFER in {differ} of {len(rows_a)} rows"
    return True, f"{len(rows_a)} row(s) identical"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def train_step(model, px, ids, hf: bool):
    """Forward + backward with labels (= the ids, shifted inside the loss); returns the loss and a grad."""
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values=px, input_ids=ids, labels=ids).loss if hf else model(px, ids, labels=ids).loss
    loss.backward()
    head = model.output if hf else model.lm_head
    return loss.detach(), head.weight.grad


def same_train(a, b):
    # the loss and the LM head's gradient, relative to their scale; fp32 sums in another order drift ~1e-6
    e_loss, e_grad = rel_err(a[0], b[0]), rel_err(a[1], b[1])
    return max(e_loss, e_grad) <= 1e-4, f"loss rel err {e_loss:.1e}, lm_head grad {e_grad:.1e}"


@dataclass
class Workload:
    title: str
    inputs: Callable[[Any], dict]  # config -> the inputs both sides get
    ours: Callable[..., Any]
    theirs: Callable[..., Any]
    same: Callable[[Any, Any], tuple[bool, str]] = same_ids
    target: float | None = None  # ratio git_scratch / transformers the issue asks for
    video: bool = False  # runs on the shape's 6-frame video checkpoint
    grad: bool = False  # needs autograd (the training step)
    exact: bool = False  # float output judged against float64 (ties.vision_against_exact)
    # generation only, for the floor estimate (run.floor_seconds) and the near-tie check (ties.py):
    # images, rows per image (beams or prompts), new tokens, longest prompt, beams
    gen: dict | None = None


QUESTION_LENGTHS = (8, 12, 10, 14, 9)  # five questions of different lengths about one image


def _questions(cfg):
    return {"px": pixels(cfg, 1), "qs": [prompt(cfg, 1, n, seed=10 + i) for i, n in enumerate(QUESTION_LENGTHS)]}


def _questions_ours(m, px, qs):
    """One encoding, then all questions in one call: a list of prompts of different lengths."""
    img = m.encode_image(px)
    out = gen_ours(m, ids=[q[0] for q in qs], new=10, image=img)  # (5, T + 10), left-padded to the longest
    return [out[i : i + 1, out.shape[1] - q.shape[1] - 10 :] for i, q in enumerate(qs)]  # padding dropped


def _questions_ours_one_by_one(m, px, qs):
    img = m.encode_image(px)  # one encoding, shared by every question
    return [gen_ours(m, ids=q, new=10, image=img) for q in qs]


UNEVEN = (1, 3, 2)  # questions about each of three images: a VQA set asks each image its own number
UNEVEN_LENGTHS = (8, 12, 10, 14, 9, 11)


def _uneven(cfg):
    return {"px": pixels(cfg, len(UNEVEN)), "qs": [prompt(cfg, 1, n, seed=20 + i)[0]
                                                    for i, n in enumerate(UNEVEN_LENGTHS)]}


def _uneven_ours(m, px, qs):
    """Each image through the decoder once for its questions: prompts_per_image."""
    return m.generate(px, input_ids=[q.tolist() for q in qs], prompts_per_image=list(UNEVEN), max_new_tokens=10,
                      min_new_tokens=10)


def _uneven_ours_copies(m, px, qs):
    """Without prompts_per_image: each image encoded once, its features repeated per question, so the decoder's
    image pass runs once per question (how eval and the demo called generate before it)."""
    img = m.encode_image(px).repeat_interleave(torch.tensor(UNEVEN), dim=0)  # (6, N, D)
    return m.generate(image=img, input_ids=[q.tolist() for q in qs], max_new_tokens=10, min_new_tokens=10)


def _uneven_theirs(m, px, qs):
    """transformers' batched form: each question with its image's pixels, left-padded prompts."""
    T = max(len(q) for q in qs)
    ids = torch.stack([torch.nn.functional.pad(q, (T - len(q), 0)) for q in qs])
    mask = torch.stack([torch.arange(T) >= T - len(q) for q in qs]).long()
    return m.generate(pixel_values=px.repeat_interleave(torch.tensor(UNEVEN), dim=0), input_ids=ids,
                      attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False)


def caption(batch: int, beams: int = 1, new: int = 20, target=None, video=False, title=None):
    return Workload(
        title=title or f"caption, {'greedy' if beams == 1 else f'beam {beams}'}, {batch} image{'s' * (batch > 1)}",
        inputs=lambda cfg: {"px": pixels(cfg, batch), "ids": prompt(cfg, batch, 1)},
        ours=lambda m, px, ids: gen_ours(m, px, ids, new, beams),
        theirs=lambda m, px, ids: gen_theirs(m, px, ids, new, beams),
        target=target,
        video=video,
        gen={"images": batch, "rows": beams, "new": new, "prompt": 1, "beams": beams},
    )


WORKLOADS: dict[str, Workload] = {
    "vision": Workload(
        "vision encoder alone, 1 image",
        inputs=lambda cfg: {"px": pixels(cfg, 1)},
        ours=lambda m, px: m.vision(px),
        theirs=lambda m, px: m.git.image_encoder(px).last_hidden_state,
        exact=True,  # each side against float64 (ties.vision_against_exact), not against each other
    ),
    "greedy-1": caption(1, target=0.45),
    "greedy-1-40": caption(1, new=40, title="caption, greedy, 1 image, 40 new tokens"),
    "greedy-8": caption(8, target=0.45),
    "beam4-1": caption(1, beams=4, target=0.25),
    "beam4-8": caption(8, beams=4, target=0.25),
    "vqa": Workload(
        "VQA, 12-token prompt + 10 new, 1 image",
        inputs=lambda cfg: {"px": pixels(cfg, 1), "ids": prompt(cfg, 1, 12)},
        ours=lambda m, px, ids: gen_ours(m, px, ids, 10),
        theirs=lambda m, px, ids: gen_theirs(m, px, ids, 10),
        gen={"images": 1, "rows": 1, "new": 10, "prompt": 12},
    ),
    "video": caption(1, video=True, title=f"video caption, greedy, {VIDEO_FRAMES} frames"),
    "questions-5": Workload(
        f"{len(QUESTION_LENGTHS)} questions about one image, 10 new each, one batched call "
        "(transformers: one call each)",
        inputs=_questions,
        ours=_questions_ours,
        theirs=lambda m, px, qs: [gen_theirs(m, px, q, 10) for q in qs],
        target=0.3,
        gen={"images": 1, "rows": len(QUESTION_LENGTHS), "new": 10, "prompt": max(QUESTION_LENGTHS)},
    ),
    "questions-5-seq": Workload(
        f"{len(QUESTION_LENGTHS)} questions about one image, one call each after one encoding",
        inputs=_questions,
        ours=_questions_ours_one_by_one,
        theirs=lambda m, px, qs: [gen_theirs(m, px, q, 10) for q in qs],
    ),
    "questions-uneven": Workload(
        f"{sum(UNEVEN)} questions about {len(UNEVEN)} images ({', '.join(map(str, UNEVEN))} each), 10 new, "
        "one batched call on both sides",
        inputs=_uneven,
        ours=_uneven_ours,
        theirs=_uneven_theirs,
        gen={"images": len(UNEVEN), "rows": sum(UNEVEN) // len(UNEVEN), "new": 10, "prompt": max(UNEVEN_LENGTHS)},
    ),
    "questions-uneven-copies": Workload(
        f"the same {sum(UNEVEN)} questions, ours with each image's features repeated per question",
        inputs=_uneven,
        ours=_uneven_ours_copies,
        theirs=_uneven_theirs,
    ),
    "train-8": Workload(
        "training step (forward + backward), batch 8, 20 text tokens",
        inputs=lambda cfg: {"px": pixels(cfg, 8), "ids": prompt(cfg, 8, 20)},
        ours=lambda m, px, ids: train_step(m, px, ids, hf=False),
        theirs=lambda m, px, ids: train_step(m, px, ids, hf=True),
        same=same_train,
        target=0.9,
        grad=True,
    ),
}

QUICK = ("vision", "greedy-1", "greedy-1-40", "beam4-1", "vqa", "questions-5")
