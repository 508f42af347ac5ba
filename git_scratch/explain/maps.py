"""Per-word attention maps over the image patches: generate, then one teacher-forced forward that records
every decoder layer's attention probabilities (GIT.forward(output_attentions=True), through record.py).

Which attention row belongs to a word: the row of the position that *predicted* it. New word i comes out of
the logits at text position T - 1 + i (the prompt's last token for the first word), so that position's
attention is what the model read while choosing the word. (The word's own row would show what it reads
once it is an input, which serves the next word.)

Which columns: the decoder sees every token the vision encoder outputs, per frame N1 = 1 + h*w: a class
token, then the h x w patches (vision.py; ln_post normalises them all). The class token sits at no place in
the image, so its share is dropped and the patches' shares renormalised to sum to 1. Text columns (the
prompt, earlier words) are dropped the same way: a map says where in the image, not how much.

    last     the last decoder layer's attention, averaged over heads.
    rollout  Abnar & Zuidema (2020): per layer A' = (A + I) / 2, heads averaged (the identity stands for the
             residual stream), rows renormalised, multiplied through the decoder layers first to last:
             R = A'_L ... A'_1, row = the predicting position. Under GIT's mask (mask.py) image rows hold
             image columns only, so R's image block is a rollout among the image tokens (which see each other
             in every decoder layer) and a text row's image columns sum the paths to a patch both directly and
             through earlier text tokens that looked at it. It starts at the decoder's input: the mixing inside
             the vision encoder is not traced, and image token j stands for the patch it sits at.
Shapes: the legend in model.py (N image tokens, T prompt tokens, L = N + T + new tokens, H heads).
"""

from __future__ import annotations

import torch

from ..decoder import TextBlock
from ..generation.generate import generate

METHODS = ("last", "rollout")


def token_text(tokenizer, i: int) -> str:
    """The word piece of id i as the vocabulary spells it ("##s", "[SEP]")."""
    backend = getattr(tokenizer, "backend", None)
    piece = backend.id_to_token(i) if backend is not None else None
    return piece if piece is not None else tokenizer.decode([i], skip_special_tokens=False)


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer probabilities, each (H, L, L), first layer first -> (L, L): attention rollout."""
    L = attentions[0].shape[-1]
    eye = torch.eye(L, dtype=torch.float64, device=attentions[0].device)
    out = eye
    for a in attentions:
        a = (a.double().mean(dim=0) + eye) / 2  # (L, L): heads averaged, the residual as the identity
        out = (a / a.sum(dim=-1, keepdim=True)) @ out
    return out


@torch.no_grad()
def explain(model, tokenizer, pixel_values, prompt_ids=None, *, method="last", max_new_tokens=20,
            image=None) -> list[dict]:
    """Greedy words for one image (or video) and, for each new token, where in the image it looked.

    pixel_values (1, 3, H, W) or (1, F, 3, H, W); prompt_ids (1, T) ([CLS] + question) or None for a caption;
    `image`: model.encode_image(pixel_values) where the caller has it already (the server keeps recent ones).
    Returns one dict per new token ([SEP] included when generated): {"token": its word piece, "id": int,
    "map": the h x w patch grid as a list of rows of floats (a video: a list of such grids, one per frame),
    non-negative and summing to 1 over the whole image or video}. `method`: "last" or "rollout" (module doc).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_blocks(model)
    if pixel_values.shape[0] != 1:
        raise ValueError(f"explain takes one image, got pixel_values of batch {pixel_values.shape[0]}")
    pixel_values = pixel_values.to(model.device, model.dtype)
    image = model.encode_image(pixel_values) if image is None else image  # (1, N, D)
    if prompt_ids is None:
        prompt_ids = torch.tensor([[model.config.text.bos_id]])
    prompt_ids = torch.as_tensor(prompt_ids, device=model.device).reshape(1, -1)
    T = prompt_ids.shape[1]
    out = generate(model, image=image, input_ids=prompt_ids, max_new_tokens=max_new_tokens, return_scores=True)
    n = int(out.lengths[0])
    new = out.sequences[0, T : T + n].tolist()
    # every predicting position: the prompt, then each new token but the last (which predicts nothing)
    att = model(image=image, input_ids=out.sequences[:, : T + n - 1], output_attentions=True).attentions
    N = image.shape[1]
    rows = torch.arange(n, device=image.device) + N + T - 1  # (n,) the positions that predicted the words
    if method == "last":
        flow = att[-1][0].double().mean(dim=0)[rows, :N]  # (n, N)
    else:
        flow = rollout([a[0] for a in att])[rows, :N]
    grids = patch_grids(flow, pixel_values, model.config.vision.patch_size)  # (n, F, h, w)
    maps = grids.tolist() if pixel_values.ndim == 5 else grids[:, 0].tolist()
    return [{"token": token_text(tokenizer, i), "id": i, "map": m} for i, m in zip(new, maps)]


def check_blocks(model) -> None:
    """ValueError, before any work, for decoder blocks explain cannot read: the maps are the probabilities
    GIT's own block records from its one attention over [image ; text] (TextBlock; a subclass, or its MLP
    or attention swapped for another that records as Attention does, is read the same way)."""
    unknown = sorted({type(b).__name__ for b in model.blocks if not isinstance(b, TextBlock)})
    if unknown:
        raise ValueError(f"explain reads the attention maps of GIT's decoder blocks (TextBlock) over [image ; text]; "
                         f"this model's are {', '.join(unknown)}, whose maps it does not know")


def patch_grids(flow: torch.Tensor, pixel_values: torch.Tensor, patch: int) -> torch.Tensor:
    """(n, N) shares of the image tokens -> (n, F, h, w) float64 over the patches alone, each word's summing
    to 1: every frame's class token (its first token) dropped."""
    h, w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    F = pixel_values.shape[1] if pixel_values.ndim == 5 else 1
    if flow.shape[1] != F * (1 + h * w):
        raise ValueError(f"{flow.shape[1]} image tokens, expected {F} frame(s) of 1 + {h} x {w}")
    grids = flow.reshape(len(flow), F, 1 + h * w)[:, :, 1:].clamp(min=0)  # (n, F, h*w): class tokens out
    grids = grids / grids.sum(dim=(1, 2), keepdim=True)
    return grids.reshape(len(flow), F, h, w)
