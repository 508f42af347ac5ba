"""How the original GIT cuts text (microsoft/GenerativeImage2Text @ faae4fb): a training row, as its
`get_data` builds `(input_ids, need_predict)` for one (prompt, target) pair, and a question at inference.

Both losses (loss.py) count the tokens `need_predict` marks; the processor's compat="original" cuts
questions with `original_question`.
"""

from __future__ import annotations

MAX_TEXT_LEN = 40  # the original's max_text_len: prompt and target tokens each, and their sum


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
