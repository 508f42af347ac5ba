"""One code path: an architecture change made in the model files reaches `generate` by itself.

The reference is the uncached rollout (`use_cache=False`: the whole sequence through `GIT.forward` at
every step). Cached decoding must give the same ids for every option the config offers, for a changed
block, and must fall back or refuse, never differ, when the model breaks what the cache relies on.
Models are built here at random init (std 0.1, so the words depend on the image; asserted below).
"""

import warnings

import pytest
import torch

from git_scratch import GIT, GitConfig, init_weights, load, record, save
from git_scratch.generation.cache import CacheMisuse
from git_scratch.decoder import TextBlock
from git_scratch.layers import MLP
from git_scratch.convert import ConversionError, convert

# Scores are sums of the same float32 log-probs computed through two paths (cache vs full forward):
# they agree to a few ulps of each per-token term (measured < 1e-6 here); 1e-5 is ~20x that, while a
# wrong token moves a score by 1e-2 or more.
SCORE_TOL = 1e-5


def tiny(norm: str = "post", video: bool = False, seed: int = 0) -> GIT:
    cfg = GitConfig.preset("tiny-video" if video else "tiny")
    cfg.text.norm = norm
    model = init_weights(GIT(cfg), std=0.1, generator=torch.Generator().manual_seed(seed)).eval()
    with torch.no_grad():
        model.lm_head.bias[cfg.text.eos_id] += 1.0  # some rows end early, so EOS and padding really happen
    return model


def pixels(model: GIT, n: int, seed: int = 0) -> torch.Tensor:
    c = model.config
    shape = (n, c.n_frames, 3) if c.n_frames else (n, 3)
    return torch.randn(*shape, c.vision.image_size, c.vision.image_size, generator=torch.Generator().manual_seed(seed))


PROMPTS = [[1, 5, 9], [1], [1, 7, 3, 4, 8]]  # one per image, different lengths


def both(model, px, **kw):
    """(cached, uncached) Generations of the same request."""
    cached = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, **kw)
    rollout = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, use_cache=False, **kw)
    return cached, rollout


def assert_same(cached, rollout):
    assert torch.equal(cached.sequences, rollout.sequences), f"\ncached  {cached.sequences}\nrollout {rollout.sequences}"
    assert (cached.scores - rollout.scores).abs().max() < SCORE_TOL
    assert (cached.logprob - rollout.logprob).abs().max() < SCORE_TOL


SEARCHES = {"greedy": {}, "beam3x2": dict(num_beams=3, num_return_sequences=2, length_penalty=0.7),
            "sample2": dict(do_sample=True, num_return_sequences=2, top_k=20)}


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_cached_generation_equals_the_uncached_rollout(norm, video, search):
    model = tiny(norm, video)
    px = pixels(model, 3)
    kw = dict(SEARCHES[search])
    if kw.get("do_sample"):  # the same random draws on both paths
        cached = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, generator=torch.Generator().manual_seed(1), **kw)
        rollout = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, use_cache=False,
                                 generator=torch.Generator().manual_seed(1), **kw)
    else:
        cached, rollout = both(model, px, **kw)
    assert_same(cached, rollout)
    # the words depend on the image, so an image bug on either path would show
    moved = model.generate(px + 0.5, PROMPTS, max_new_tokens=8, generator=torch.Generator().manual_seed(1), **kw)
    assert not torch.equal(moved, cached.sequences)


def test_pre_norm_is_a_different_model_with_a_final_layernorm():
    post, pre = tiny("post"), tiny("pre")
    assert pre.ln_f is not None and post.ln_f is None
    assert "ln_f.weight" in pre.state_dict() and "ln_f.weight" not in post.state_dict()
    px, ids = pixels(post, 2), torch.tensor([[1, 5, 9], [1, 4, 4]])
    # the same weights wired two ways: apart by far more than float32 noise (~1e-6 on logits of order 1)
    assert (post(px, ids).logits - pre(px, ids).logits).abs().max() > 1e-2


def scaled(forward, factor):
    def wrapped(self, *args, **kwargs):
        return forward(self, *args, **kwargs) * factor

    return wrapped


@pytest.mark.parametrize("cls", [TextBlock, MLP])
def test_wrapping_a_block_or_mlp_in_user_code_reaches_generate(monkeypatch, cls):
    model = tiny()
    px = pixels(model, 3)
    before = model.generate(px, PROMPTS, max_new_tokens=8, num_beams=2)
    monkeypatch.setattr(cls, "forward", scaled(cls.forward, 1.7))
    cached, rollout = both(model, px, num_beams=2)
    assert_same(cached, rollout)
    assert not torch.equal(cached.sequences, before)  # the change did reach generation


def test_a_mask_that_lets_the_image_see_the_text_falls_back_to_the_uncached_path(monkeypatch):
    model = tiny()
    px = pixels(model, 3)
    monkeypatch.setattr(model, "mask", lambda n_img, n_txt, device=None: torch.ones(n_img + n_txt, n_img + n_txt,
                                                                                    dtype=torch.bool, device=device))
    with pytest.warns(UserWarning, match="image tokens attend to text"):
        cached = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8)
    rollout = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, use_cache=False)
    assert_same(cached, rollout)


def test_a_mask_with_bidirectional_text_falls_back_to_the_uncached_path(monkeypatch):
    model = tiny()
    git_mask = model.mask

    def prefix_lm(n_img, n_txt, device=None):
        m = git_mask(n_img, n_txt, device)
        m[n_img:, n_img:] = True
        return m

    monkeypatch.setattr(model, "mask", prefix_lm)
    px = pixels(model, 3)
    with pytest.warns(UserWarning, match="text tokens attend to later text"):
        cached = model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8)
    assert_same(cached, model.generate(px, PROMPTS, return_scores=True, max_new_tokens=8, use_cache=False))


def test_a_narrower_mask_that_keeps_the_git_structure_is_served_by_the_cache(monkeypatch):
    """Text that may not see the image's class token: still cacheable; the cache takes the model's rows."""
    model = tiny()
    git_mask = model.mask

    def no_cls(n_img, n_txt, device=None):
        m = git_mask(n_img, n_txt, device)
        m[n_img:, 0] = False
        return m

    px = pixels(model, 3)
    plain = model.generate(px, PROMPTS, max_new_tokens=8)
    monkeypatch.setattr(model, "mask", no_cls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        cached, rollout = both(model, px)
    assert_same(cached, rollout)
    assert not torch.equal(cached.sequences, plain)


def test_a_block_that_attends_under_another_mask_is_refused(monkeypatch):
    forward = TextBlock.forward
    monkeypatch.setattr(TextBlock, "forward", lambda self, x, allowed, kv=None:
                        forward(self, x, None if allowed is None else allowed.clone(), kv))
    model = tiny()
    with pytest.raises(CacheMisuse, match="a decoder block attended under a mask other than the one the model gave "
                                          "it.*generate with use_cache=False"):
        model.generate(pixels(model, 1), max_new_tokens=4)
    model.generate(pixels(model, 1), max_new_tokens=4, use_cache=False)  # the way out the message names


def test_forward_always_returns_one_output_type():
    model = tiny()
    px, ids = pixels(model, 2), torch.tensor([[1, 5, 9], [1, 4, 4]])
    plain = model(px, ids)
    full = model(px, ids, labels=ids, output_hidden_states=True, output_attentions=True)
    assert type(plain) is type(full)
    assert plain.loss is None and plain.hidden_states is None and plain.attentions is None
    # attention maps take the explicit softmax instead of SDPA: the same sums in another order (float32)
    assert torch.allclose(plain.logits, full.logits, rtol=0, atol=1e-5) and full.loss is not None
    n = model.config.text.n_layers
    assert len(full.hidden_states) == n + 1 and len(full.attentions) == n
    assert len(full.vision_hidden_states) == model.config.vision.n_layers + 1


def test_a_pre_norm_checkpoint_saves_and_loads_but_is_refused_by_the_hugging_face_export(tmp_path):
    model = tiny("pre")
    save(model, tmp_path / "pre")
    back = load(tmp_path / "pre")
    assert back.config.text.norm == "pre"
    px, ids = pixels(model, 1), torch.tensor([[1, 5, 9]])
    assert torch.equal(back(px, ids).logits, model(px, ids).logits)
    with pytest.raises(ConversionError, match="text.norm is 'pre': transformers' GIT has only post-LayerNorm "
                                              "decoder blocks"):
        convert(tmp_path / "pre", tmp_path / "hf", to_hf=True)
    assert not (tmp_path / "hf").exists()


def test_an_outer_recording_keeps_recording_after_forward_opens_and_closes_its_own():
    model = tiny()
    px, ids = pixels(model, 1), torch.tensor([[1, 5, 9]])
    with record.recording([model.blocks]) as outer:
        model(px, ids, output_attentions=True)  # forward's own recording: the same modules, the same tensors
        last = model(px, torch.tensor([[1, 4]]))  # after it closed, the outer one is the open one again
    L = model.config.vision.n_tokens + 2  # the last call: image tokens + 2 text tokens
    assert last.logits.shape[1] == 2
    assert outer.attentions(model.blocks)[0].shape[-2:] == (L, L)
    assert outer.hidden_states(model.blocks)[-1].shape[1] == L
