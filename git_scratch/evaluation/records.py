"""What a caption or answer is, as `caption --json`, `vqa --json` and `git-scratch serve` hand it out.

A result is {"question", "text", "ids", "score"} read off a `generate(..., return_scores=True)`; the command line
and the server add "input", "file" and "settings" around it. "settings" holds what changes a result (the
checkpoint's fingerprint, dtype, decoding options), so a results file can tell this run's results from another's.

Here, below both the command line (cli/, floor 5) and the server (serve/, floor 4), so that the two build the
same record in one place; out of generation/, which is the model's small core, because a record is about a
run (its checkpoint files, its settings), not about decoding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..constants import PREPROCESSOR_FILES, TOKENIZER_FILES
from ..generation.generate import generate

_SAMPLE = 1 << 20  # bytes read from each end of the weights file for the checkpoint fingerprint


def checkpoint_fingerprint(ckpt) -> str | None:
    """A short hash of what a checkpoint computes with: its config, preprocessing and tokenizer files,
    and the weights' size and first and last MiB (reading all of a 1.5 GB file would cost seconds).
    An `export-onnx` folder's weights are its graphs (and their .data files): its own fingerprint, never its
    source's, so results from onnxruntime and from torch (float32 sums in another order) never mix on resume."""
    ckpt = Path(ckpt)
    weights = sorted(ckpt.glob("*.onnx")) + sorted(ckpt.glob("*.onnx.data")) or [ckpt / "model.safetensors"]
    if not weights[0].is_file():
        return None
    h = hashlib.sha256()
    for name in ("config.json", *PREPROCESSOR_FILES, *TOKENIZER_FILES):
        if (ckpt / name).is_file():
            h.update(name.encode() + b"\0" + (ckpt / name).read_bytes())
    for file in weights:
        size = file.stat().st_size
        with file.open("rb") as f:
            h.update(str(size).encode() + f.read(_SAMPLE))
            f.seek(max(size - _SAMPLE, 0))
            h.update(f.read(_SAMPLE))
    return h.hexdigest()[:16]


def settings(fingerprint: str | None, dtype: str, max_new_tokens: int | None, num_beams: int,
             sampling: dict | None = None, compat: str = "transformers", max_length: int | None = None,
             quantize: str | None = None) -> dict:
    """The options that change a result. `sampling` ({temperature, top_k, top_p, seed}) only when sampling,
    compat only when not the default, quantize only when set: so results written before those existed still
    compare equal."""
    s = {"checkpoint": fingerprint, "dtype": dtype, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
         "sample": sampling}
    if compat != "transformers":
        s.update(compat=compat, max_length=max_length)
    if quantize:  # a resume never mixes int8 results with float ones
        s["quantize"] = quantize
    return s


def results(tokenizer, out, prompt_lengths: list[int], questions: list[str | None]) -> list[dict]:
    """One result per row of `out` (a Generation): {"question", "text", "ids", "score"}.

    prompt_lengths: each row's prompt tokens ([CLS] included); the prompts are out.sequences' first columns,
    left-padded to the longest (generate's layout). "ids": the row's prompt and new tokens, no padding.
    "score": mean log-probability per new token, whatever the search (for beams at length_penalty 1 this is
    also transformers' sequences_scores)."""
    width = out.sequences.shape[1] - out.token_logprobs.shape[1]  # the prompt part of every row
    recs = []
    for seq, t, n, logprob, q in zip(out.sequences.tolist(), prompt_lengths, out.lengths.tolist(),
                                     out.logprob.tolist(), questions):
        new = seq[width : width + n]  # finished rows are padded after their EOS: cut there
        recs.append({"question": q, "text": tokenizer.decode(new), "ids": seq[width - t : width + n],
                     "score": logprob / max(n, 1)})
    return recs


def prompt(processor, question: str | None, device) -> torch.Tensor:
    """(1, T) prompt ids: [CLS] for a caption, [CLS] + question for VQA (GIT's format: no [SEP]; with
    compat="original", the original's cut of the question)."""
    if question is None:
        return torch.tensor([[processor.tokenizer.cls_id]], device=device)
    return torch.from_numpy(processor.encode_text(question)[0]).to(device)


def ask(model, tokenizer, image: torch.Tensor, prompts: list[torch.Tensor], questions: list[str | None],
        **options) -> list[dict]:
    """The records of each row of `image` (B, N, D) for each of `questions` (their (1, T) `prompts`), image-major
    (image 0's, then image 1's; k of each with num_return_sequences k): one generate call, so each image goes
    through the decoder once for all of them. options: generate's. The command line, the one-call API and
    their tests read records from here."""
    k = options.get("num_return_sequences", 1)
    # one question: its (1, T) prompt serves every row; several: each image's own, image-major
    ids = prompts[0] if len(prompts) == 1 else [p[0].tolist() for _ in range(len(image)) for p in prompts]
    out = generate(model, image=image, input_ids=ids, return_scores=True, **options)
    rows = [(p.shape[1], q) for _ in range(len(image)) for p, q in zip(prompts, questions) for _ in range(k)]
    return results(tokenizer, out, [n for n, _ in rows], [q for _, q in rows])
