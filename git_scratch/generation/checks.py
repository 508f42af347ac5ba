"""Every check of a decoding request, in one wording: generate (its keywords), the command line (its flags) and
the server (its form fields) all call these. `spell` names an option as the caller's user knows it.
"""

from __future__ import annotations


def keyword(name: str) -> str:
    """generate's keywords and the server's form fields: `num_beams`."""
    return name


def flag(name: str) -> str:
    """The command line's flags: `--num-beams` (do_sample is --sample)."""
    return "--sample" if name == "do_sample" else "--" + name.replace("_", "-")


# Sampling options and their values when not sampling: any other value needs do_sample.
SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


def decoding_error(max_new_tokens: int = 20, num_beams: int = 1, do_sample: bool = False, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, spell=keyword) -> str | None:
    """Why these decoding options cannot run, or None: at least one new token and one beam; sampling options
    only with sampling (else they would be ignored), within their ranges; no sampling with beams."""
    for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if not value >= 1:
            return f"{spell(name)} must be at least 1, got {value}"
    if not temperature > 0:
        return f"{spell('temperature')} must be > 0, got {temperature}"
    if not top_k >= 0:
        return f"{spell('top_k')} must be >= 0 (0: every token), got {top_k}"
    if not 0 < top_p <= 1:
        return f"{spell('top_p')} must be in (0, 1], got {top_p}"
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    given = [spell(name) for name, off in SAMPLING.items() if sampling[name] != off]
    if given and not do_sample:
        one = len(given) == 1
        return (f"{', '.join(given)} {'needs' if one else 'need'} {spell('do_sample')}: without it decoding is "
                f"greedy (or beam search) and {'it' if one else 'they'} would be ignored")
    if do_sample and num_beams > 1:
        return f"{spell('do_sample')} and {spell('num_beams')} > 1 cannot be combined (no beam sampling)"
    return None


def room_error(prompt: int, max_new_tokens: int, limit: int, what: str = "the longest prompt",
               spell=keyword) -> str | None:
    """Why a prompt of `prompt` tokens ([CLS] included) and `max_new_tokens` new ones do not fit `limit` text
    positions, or None. The last new token is never fed back, so they need prompt + max_new_tokens - 1."""
    need = prompt + max_new_tokens - 1
    if need <= limit:
        return None
    if prompt == 1:  # a caption: no prompt is shorter, so the option itself is out of reach
        return (f"{spell('max_new_tokens')} {max_new_tokens} cannot be reached: the model has {limit} text "
                f"positions (max_position_embeddings), so at most {limit} new tokens after [CLS], fewer after a "
                "question")
    return (f"{what} is {prompt} tokens long (with [CLS]); with {spell('max_new_tokens')} {max_new_tokens} it "
            f"needs {need} text positions, the model has {limit} (max_position_embeddings)")
