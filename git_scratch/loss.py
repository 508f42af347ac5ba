"""Training losses: teacher-forced next-token prediction over the text, two ways.

Position t of the text predicts token t + 1 (the image tokens predict nothing), so both losses pair
`logits[:, :-1]` with the ids shifted left by one:

    ids          [CLS]  what  colour ?  red   [SEP]
    need_predict   0     0     0     0   1      1
    logits at    [CLS]  what  colour ?  red           -> predict  what colour ? red [SEP]
    counted                          ^    ^              (original: only `red` and `[SEP]`)

* `hf_loss`: transformers' GitForCausalLM loss: cross-entropy over the shifted labels, -100 ignored,
  mean over the counted tokens.
* `original_loss`: microsoft/GenerativeImage2Text's `SmoothLabelCrossEntropyLoss`: label smoothing
  eps = 0.1 as it computes it (1 - eps on the true token, eps / (V - 1) on each other one), KL divergence
  in float32 summed over the vocabulary, mean over the tokens with `need_predict` = 1.

`example_ids` builds `(input_ids, need_predict)` for one (prompt, target) pair the way the original's
`get_data` does, truncation included; `original_question` a question alone, as its inference cuts it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

IGNORE = -100  # label id that hf_loss skips (PyTorch's and transformers' convention)
SMOOTHING = 0.1  # the original's label smoothing eps
MAX_TEXT_LEN = 40  # the original's max_text_len: prompt and target tokens each, and their sum


def hf_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), labels (B, T) -> mean cross-entropy of logits[t] against labels[t + 1], -100 ignored."""
    return F.cross_entropy(
        rearrange(logits[:, :-1].float(), "b t v -> (b t) v"), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


def original_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, need_predict: torch.Tensor, eps: float = SMOOTHING
) -> torch.Tensor:
    """logits (B, T, V), input_ids (B, T) `[CLS] + prompt + target + [SEP]` (0-padded), need_predict (B, T)
    1 on the target tokens and the final [SEP] -> the original's label-smoothed loss (module docstring)."""
    keep = need_predict[:, 1:].reshape(-1) == 1  # (B*(T-1),) tokens to predict
    if not keep.any():
        raise ValueError("need_predict marks no token to predict")
    pred = rearrange(logits[:, :-1].float(), "b t v -> (b t) v")[keep]  # (n, V) NB: float32 even under bf16
    target = input_ids[:, 1:].reshape(-1)[keep]  # (n,)
    V = pred.shape[-1]
    smooth = torch.full_like(pred, eps / (V - 1)).scatter_(1, target[:, None], 1 - eps)  # (n, V)
    # KL(smooth || softmax(pred)) per token, summed over the vocabulary, then the mean over tokens.
    return F.kl_div(F.log_softmax(pred, dim=-1), smooth, reduction="none").sum(-1).mean()


def example_ids(
    prompt: list[int], target: list[int], cls_id: int, sep_id: int, max_len: int = MAX_TEXT_LEN
) -> tuple[list[int], list[int]]:
    """Token ids of a prompt (a VQA question; [] for a caption) and its target (answer or caption), no
    specials -> (input_ids, need_predict) = ([CLS] + prompt + target + [SEP], 0 on [CLS] and the prompt,
    1 on the target and [SEP]).

    Truncation as the original's get_data: the prompt and the target each keep their first `max_len`
    tokens; if together they are longer than `max_len`, only their last `max_len - 2` are kept (the end of
    the question, with the whole answer in practice). NB: 39 or 40 tokens are kept whole, so a row can
    hold up to max_len + 2 ids.
    """
    prompt, target = prompt[:max_len], target[:max_len]
    payload = prompt + target
    need = [0] * len(prompt) + [1] * len(target)
    if len(payload) > max_len:
        payload, need = payload[-(max_len - 2):], need[-(max_len - 2):]
    return [cls_id] + payload + [sep_id], [0] + need + [1]


def original_question(question: list[int], cls_id: int, max_len: int = MAX_TEXT_LEN) -> list[int]:
    """A question's token ids, no specials -> [CLS] + what the original's inference feeds the model
    (generativeimage2text/inference.py:92-101 @ faae4fb): its first `max_len` tokens, of those the last
    `max_len - 2`, and no [SEP] (generation continues the question).

    NB: this cuts 39 or 40 tokens to 38, which example_ids (the original's training) keeps whole.
    """
    return [cls_id] + question[:max_len][-(max_len - 2):]
