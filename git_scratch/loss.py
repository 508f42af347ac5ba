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

The rows both read are cut as the original's `get_data` cuts them: preprocessing/truncation.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

IGNORE = -100  # label id that hf_loss skips (PyTorch's and transformers' convention)
SMOOTHING = 0.1  # the original's label smoothing eps


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
