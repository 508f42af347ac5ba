"""Generation parity: git_scratch.generate against transformers.GitForCausalLM.generate, same converted weights.

What transformers 5.24 actually does, found by running it (tests below pin our side of each):
- Text positions. `generate` builds `position_ids` from the attention mask (cumsum - 1) and passes
  them on every step, so generated token i of a T-token prompt has text position T + i, with or
  without `use_cache`, and equals a no-cache greedy loop over the full forward. GitModel's own
  fallback when no position_ids are given (`cache_length`) counts the cached *image* tokens too, so a
  hand-written cached loop that omits position_ids gets position N + t: wrong logits (a transformers
  bug outside `generate`). We match `generate`: text position t, cache/mask position N + t.
- Left-padded prompts. Positions restart at 0 at each row's first real token and pad keys are masked,
  so transformers' batched output equals each prompt run alone (asserted below). Right-padded prompts
  are not handled by transformers (it warns and generates after the pads); we re-pack any padding.
- Beam search pads finished beams with `pad_token_id or eos_token_id`: a pad id of 0 counts as unset,
  so GIT's beams (pad 0) are padded with [SEP]; greedy and sampling pad with 0. We do the same.

Ids are compared exactly. Scores are float32 sums of up to 20 log-probs whose logits differ from
transformers' by a few ulps (our cached attention vs its explicit softmax, in another order; see
test_parity.py). Measured worst case over the beam sweep: 2.1e-7 of max(1, |score|) for sequence
scores (magnitudes 0.3 to 9), 1.6e-7 for per-token log-probs; SCORE_TOL = 1e-5 * max(1, |score|)
leaves ~50x headroom while a wrong length penalty or a missed token moves a score by 1e-2 or more.
"""

import shutil

import pytest
import torch

import _gen_helpers as H
from reference import build
from git_scratch.generation.cache import KVCache
from git_scratch.config import TextConfig
from git_scratch.generation.decoders import Cached
from git_scratch.mask import git_mask


def SCORE_TOL(ref: torch.Tensor) -> torch.Tensor:  # see module docstring
    return 1e-5 * ref.abs().clamp_min(1.0)


LOGIT_REL = 1e-5  # as test_parity.REL: the same float32 reordering, through the same layers


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """ckpt(name, seed, eos_bias) -> Reference; each built once per module."""
    built = {}

    def get(name: str = "tiny", seed: int = 0, eos_bias: float = 0.0):
        key = (name, seed, eos_bias)
        if key not in built:
            # git-base: vision init 0.1 makes the words depend on the image; text init stays at 0.02,
            # because at 0.1 the 768-wide decoder repeats one token forever, which would hide position bugs.
            over = dict(vision_config=dict(initializer_range=0.1)) if name == "git-base" else {}
            root = tmp_path_factory.mktemp(name)
            built[key] = build(name, root, seed, eos_bias, **over)
            shutil.rmtree(root)  # both models are in memory; git-base's files are 1.4 GB
        return built[key]

    return get


def prompts_of(r, lengths, seed):
    """Prompts starting with [CLS], of the given lengths."""
    return [r.ids(1, n, seed=seed + i)[0] for i, n in enumerate(lengths)]


def assert_same(ours: torch.Tensor, ref: torch.Tensor):
    assert ours.shape == ref.shape, f"{tuple(ours.shape)} != {tuple(ref.shape)}\nours {ours}\nref  {ref}"
    assert torch.equal(ours, ref), f"\nours {ours}\nref  {ref}"


# ---------------------------------------------------------------- the cache
@pytest.mark.parametrize("name", ["tiny", "tiny-video"])
def test_cached_decoding_matches_forward(ckpt, name):
    """Shared image K/V, 3 rows per image, right-padded prompts, then 4 single-token steps: = GIT.forward."""
    r = ckpt(name)
    m, cfg = r.ours, r.ours.config
    lengths = [3, 5, 2, 4, 5, 1]  # rows 0-2 read image 0, rows 3-5 image 1
    prompts = prompts_of(r, lengths, seed=3)
    ids, _ = H.right_pad(prompts, cfg.text.pad_id)
    steps = r.ids(6, 4, seed=4)
    with torch.no_grad():
        img = m.encode_image(r.pixels(2, seed=1))
        dec = Cached(m, img, 6, m.mask(img.shape[1], 5 + 4))
        dec.prefill_image()
        logits = [m.head(dec.hidden(ids, torch.zeros(6, 1, dtype=torch.long)))]  # (R, 5, V)
        for i in range(4):
            start = torch.tensor(lengths)[:, None] + i
            logits.append(m.head(dec.hidden(steps[:, i : i + 1], start)))
        ref_img = m.encode_image(H.reference_pixels(r.pixels(2, seed=1)))
        for row, (p, n) in enumerate(zip(prompts, lengths)):
            full = torch.cat([p, steps[row]])[None]
            ref = m(image=ref_img[row // 3 : row // 3 + 1], input_ids=full).logits[0]  # (n + 4, V)
            ours = torch.cat([logits[0][row, :n]] + [lg[row] for lg in logits[1:]])
            assert (ours - ref).abs().max() / ref.abs().max() < LOGIT_REL


def test_reorder_moves_text_rows_between_two_fixed_buffers_and_never_the_image():
    cache = KVCache.empty(TextConfig(n_layers=2, n_heads=2, dim=8), 1, 3, git_mask(5, 6), 5, torch.float32, "cpu")
    cache.txt.normal_()
    cache.img.normal_()
    txt, img, img_ptr = cache.txt.clone(), cache.img.clone(), cache.img.data_ptr()
    cache.reorder(torch.tensor([2, 2, 0]))
    assert torch.equal(cache.txt[:, :, 0], txt[:, :, 2]) and torch.equal(cache.txt[:, :, 1], txt[:, :, 2])
    assert torch.equal(cache.txt[:, :, 2], txt[:, :, 0])
    buffers = {cache.txt.data_ptr(), cache.spare.data_ptr()}
    for _ in range(3):  # later steps reuse the same two buffers: no allocation per step
        cache.reorder(torch.tensor([1, 0, 2]))
        assert {cache.txt.data_ptr(), cache.spare.data_ptr()} == buffers
    assert torch.equal(cache.txt[:, :, 0], txt[:, :, 2]) and torch.equal(cache.txt[:, :, 2], txt[:, :, 0])
    assert cache.img.data_ptr() == img_ptr and torch.equal(cache.img, img)


def test_generate_equals_a_no_cache_greedy_loop(ckpt):
    """Cache equals no cache: argmax over the full forward, re-run on the whole sequence at every step."""
    r = ckpt("tiny", seed=1)
    px, ids = r.pixels(2, seed=2), r.ids(2, 3, seed=2)
    out = r.ours.generate(px, ids, max_new_tokens=12)
    seq = ids
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat([seq, r.ours(H.reference_pixels(px), seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert_same(out, seq)  # the tiny model never emits [SEP] here, so there is no padding to mimic


# ---------------------------------------------------------------- greedy
@pytest.mark.parametrize("name,seed", [("tiny", 0), ("tiny", 1), ("tiny", 2), ("tiny-video", 0)])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("prompt", [False, True], ids=["caption", "prefix"])
def test_greedy_matches_transformers(ckpt, name, seed, batch, prompt):
    r = ckpt(name, seed)
    for img_seed in range(3):
        px = r.pixels(batch, seed=10 * seed + img_seed)
        ids = r.ids(batch, 5, seed=img_seed) if prompt else None
        assert_same(r.ours.generate(px, ids, max_new_tokens=20), H.hf_generate(r, px, ids, max_new_tokens=20))


@pytest.mark.slow
def test_git_base_matches_transformers(ckpt):
    """The published shape, sparingly (about 1 s per image encode on 2 cores): greedy, then beams with a prefix."""
    r = ckpt("git-base")
    px, ids = r.pixels(2, seed=3), r.ids(2, 4, seed=1)
    assert_same(r.ours.generate(px, max_new_tokens=10), H.hf_generate(r, px, max_new_tokens=10))
    kw = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)
    ours = r.ours.generate(px, ids, return_scores=True, **kw)
    ref = H.hf_generate(r, px, ids, return_dict=True, **kw)
    assert_same(ours.sequences, ref.sequences)
    assert ((ours.scores - ref.sequences_scores).abs() <= SCORE_TOL(ref.sequences_scores)).all()


# ---------------------------------------------------------------- beam search
BEAMS = [(nb, nrs) for nb in (2, 3, 5) for nrs in (1, 3) if nrs <= nb]


@pytest.mark.parametrize("num_beams,num_return_sequences", BEAMS)
@pytest.mark.parametrize("length_penalty", [0.6, 1.0, 2.0])
@pytest.mark.parametrize("early_stopping", [True, False])
def test_beam_search_matches_transformers(ckpt, num_beams, num_return_sequences, length_penalty, early_stopping):
    """Plain and [SEP]-prone checkpoints; captions and a mixed-length prompt batch; ids and beam scores."""
    kw = dict(max_new_tokens=12, num_beams=num_beams, num_return_sequences=num_return_sequences,
              length_penalty=length_penalty, early_stopping=early_stopping)
    for r in (ckpt("tiny"), ckpt("tiny", eos_bias=1.0)):
        px = r.pixels(4, seed=num_beams)
        ids, mask = H.left_pad(prompts_of(r, [1, 4, 6, 2], seed=num_beams), r.ours.config.text.pad_id)
        for ids_, mask_ in ((None, None), (ids, mask)):
            ours = r.ours.generate(px, ids_, mask_, return_scores=True, **kw)
            ref = H.hf_generate(r, px, ids_, mask_, return_dict=True, **kw)
            assert_same(ours.sequences, ref.sequences)
            assert ((ours.scores - ref.sequences_scores).abs() <= SCORE_TOL(ref.sequences_scores)).all()


@pytest.mark.parametrize("length_penalty", [0.6, 2.0, -0.5])
def test_beam_search_early_stopping_never_matches_transformers(ckpt, length_penalty):
    kw = dict(max_new_tokens=12, num_beams=3, num_return_sequences=2, length_penalty=length_penalty,
              early_stopping="never")
    for r in (ckpt("tiny", seed=1), ckpt("tiny", eos_bias=1.0)):
        px = r.pixels(4, seed=5)
        ours = r.ours.generate(px, return_scores=True, **kw)
        ref = H.hf_generate(r, px, return_dict=True, **kw)
        assert_same(ours.sequences, ref.sequences)
        assert ((ours.scores - ref.sequences_scores).abs() <= SCORE_TOL(ref.sequences_scores)).all()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_token_logprobs_match_transformers_transition_scores(ckpt, num_beams):
    r = ckpt("tiny", eos_bias=1.0)
    px = r.pixels(4, seed=6)
    ours = r.ours.generate(px, max_new_tokens=12, num_beams=num_beams, return_scores=True)
    ref = H.hf_generate(r, px, max_new_tokens=12, num_beams=num_beams, return_dict=True)
    assert_same(ours.sequences, ref.sequences)
    if num_beams == 1:  # greedy scores are processed logits: normalise them, as our log-probs are
        trans = r.hf.compute_transition_scores(ref.sequences, ref.scores, normalize_logits=True)
    else:
        trans = r.hf.compute_transition_scores(ref.sequences, ref.scores, ref.beam_indices)
    ended = torch.arange(trans.shape[1]) >= ours.lengths[:, None]  # transformers scores the pads after [SEP]
    trans = trans.masked_fill(ended, 0.0)
    assert ((ours.token_logprobs - trans).abs() <= SCORE_TOL(trans)).all()
    if num_beams > 1:
        assert ((ours.scores - ref.sequences_scores).abs() <= SCORE_TOL(ref.sequences_scores)).all()
    else:  # greedy: the sequence's log-probability, a sum of up to 12 terms each within SCORE_TOL
        assert ((ours.scores - trans.sum(-1)).abs() <= 12 * SCORE_TOL(trans.sum(-1))).all()


# ---------------------------------------------------------------- EOS, padding, min_new_tokens
@pytest.mark.parametrize("num_beams", [1, 3])
def test_sequences_end_at_eos_and_are_padded(ckpt, num_beams):
    r = ckpt("tiny", eos_bias=1.0)  # [SEP] likely after a few tokens
    text = r.ours.config.text
    px = r.pixels(8, seed=3)
    out = r.ours.generate(px, max_new_tokens=15, num_beams=num_beams, return_scores=True)
    assert_same(out.sequences, H.hf_generate(r, px, max_new_tokens=15, num_beams=num_beams))
    assert (out.lengths < 15).all() and len(set(out.lengths.tolist())) > 1, "rows must end early, at different steps"
    fill = text.pad_id if num_beams == 1 else text.eos_id  # transformers' beam fill: `pad or eos`, pad 0 -> [SEP]
    for row, n in zip(out.sequences[:, 1:], out.lengths):
        assert row[n - 1] == text.eos_id and (row[:n - 1] != text.eos_id).all()
        assert (row[n:] == fill).all()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_min_new_tokens_matches_transformers(ckpt, num_beams):
    r = ckpt("tiny", eos_bias=1.0)
    px = r.pixels(4, seed=8)
    free = r.ours.generate(px, max_new_tokens=14, num_beams=num_beams, return_scores=True)
    assert (free.lengths < 10).all(), "without the minimum every row would end before 10 tokens"
    kw = dict(max_new_tokens=14, min_new_tokens=10, num_beams=num_beams)
    out = r.ours.generate(px, return_scores=True, **kw)
    assert_same(out.sequences, H.hf_generate(r, px, **kw))
    assert (out.lengths >= 10).all() and (out.lengths < 14).any()


# ---------------------------------------------------------------- batches
@pytest.mark.parametrize("padding", ["left", "right", "list"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_rows_equal_their_prompt_alone(ckpt, padding, num_beams):
    """A mixed-length VQA batch, each row against the prompt alone (ours and transformers').

    transformers is batch-invariant for left padding (asserted here too); it does not handle right
    padding (it generates after the pads), so right-padded rows are compared with single-prompt runs only.
    """
    kw = dict(max_new_tokens=12, num_beams=num_beams, num_return_sequences=2 if num_beams > 1 else 1)
    n_out = kw["num_return_sequences"]
    for r in (ckpt("tiny", seed=1), ckpt("tiny", eos_bias=1.0)):
        pad = r.ours.config.text.pad_id
        prompts = prompts_of(r, [1, 4, 7, 2], seed=20)
        px = r.pixels(4, seed=21)
        if padding == "list":
            batched = r.ours.generate(px, [p.tolist() for p in prompts], **kw)
            T = 7
        else:
            ids, mask = (H.left_pad if padding == "left" else H.right_pad)(prompts, pad)
            batched, T = r.ours.generate(px, ids, mask, **kw), ids.shape[1]
            assert torch.equal(batched[::n_out, :T], ids)  # the prompt comes back as given
            if padding == "left":
                assert_same(batched, H.hf_generate(r, px, ids, mask, **kw))
        fill = pad if num_beams == 1 else r.ours.config.text.eos_id
        for i, p in enumerate(prompts):
            alone = r.ours.generate(px[i : i + 1], p[None], **kw)
            assert_same(alone, H.hf_generate(r, px[i : i + 1], p[None], **kw))
            rows = batched[i * n_out : (i + 1) * n_out, T:]
            n = alone.shape[1] - len(p)
            assert_same(rows[:, :n], alone[:, len(p):])
            assert (rows[:, n:] == fill).all()  # the rest is padding, because another row ran longer


def test_one_image_many_prompts_and_one_prompt_many_images(ckpt):
    r = ckpt("tiny", seed=2)
    px = r.pixels(3, seed=9)
    qs = prompts_of(r, [3, 3, 3], seed=30)
    ids = torch.stack(qs)
    assert_same(r.ours.generate(px[:1], ids, max_new_tokens=10), H.hf_generate(r, px[:1], ids, max_new_tokens=10))
    one = ids[:1]
    ref = torch.cat([H.hf_generate(r, px[i : i + 1], one, max_new_tokens=10) for i in range(3)])
    assert_same(r.ours.generate(px, one, max_new_tokens=10), ref)


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3, num_return_sequences=2)], ids=["greedy", "beams"])
def test_k_prompts_for_each_image_share_its_keys_values_and_equal_the_image_repeated(ckpt, kw):
    """image (2, N, D) with 3 prompts each, image-major: one cache entry per image serves its 3 rows (the
    decoder's image pass runs over 2 images, not 6), and the ids are those of each image repeated per prompt."""
    r = ckpt("tiny", seed=3)
    px = r.pixels(2, seed=12)
    qs = [q.tolist() for q in prompts_of(r, [1, 4, 2, 3, 1, 5], seed=41)]  # mixed lengths: right-padded rows
    img = r.ours.encode_image(px)
    seen = []
    hook = r.ours.blocks[0].register_forward_hook(lambda m, a, out: seen.append(a[0].shape[0]))
    try:
        shared = r.ours.generate(image=img, input_ids=qs, max_new_tokens=8, return_scores=True, **kw)
    finally:
        hook.remove()
    assert seen[0] == 2  # the image prefill: one row per image, not per prompt
    repeated = r.ours.generate(image=img.repeat_interleave(3, dim=0), input_ids=qs, max_new_tokens=8,
                               return_scores=True, **kw)
    assert_same(shared.sequences, repeated.sequences)
    # the same sums over the same keys, grouped differently (shared keys as stacked queries): float32 rounding
    torch.testing.assert_close(shared.scores, repeated.scores, rtol=0, atol=1e-5)
    alone = [r.ours.generate(image=img[i // 3 : i // 3 + 1], input_ids=[q], max_new_tokens=8, **kw)
             for i, q in enumerate(qs)]
    n_out = kw.get("num_return_sequences", 1)
    for i, a in enumerate(alone):  # each prompt alone with its image: the same new tokens
        rows = shared.sequences[i * n_out : (i + 1) * n_out, 5:]
        assert_same(rows[:, : a.shape[1] - len(qs[i])], a[:, len(qs[i]):])


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3, num_return_sequences=2), dict(use_cache=False),
                                dict(compat="original", num_beams=2, max_length=12)],
                         ids=["greedy", "beams", "uncached", "original"])
def test_images_with_different_numbers_of_prompts_go_through_the_decoder_once_each(ckpt, kw):
    """prompts_per_image [1, 3, 2]: the decoder's image pass runs over the 3 images, not the 6 prompts (cached),
    and the ids are those of each prompt with its own copy of its image's features."""
    r = ckpt("tiny", seed=3)
    px = r.pixels(3, seed=13)
    qs = [q.tolist() for q in prompts_of(r, [2, 1, 4, 3, 1, 5], seed=43)]
    img = r.ours.encode_image(px)
    kw = kw if "compat" in kw else {"max_new_tokens": 8, **kw}  # the original's search takes max_length
    seen = []
    hook = r.ours.blocks[0].register_forward_hook(lambda m, a, out: seen.append(a[0].shape[0]))
    try:
        shared = r.ours.generate(image=img, input_ids=qs, prompts_per_image=[1, 3, 2], return_scores=True, **kw)
    finally:
        hook.remove()
    if kw.get("use_cache", True):
        assert seen[0] == 3  # the image prefill: one row per image
    each = r.ours.generate(image=img[[0, 1, 1, 1, 2, 2]], input_ids=qs, return_scores=True, **kw)
    assert_same(shared.sequences, each.sequences)
    # the same sums over copies of the same keys, in the same grouping: float32 rounding at most
    torch.testing.assert_close(shared.scores, each.scores, rtol=0, atol=1e-5)


def test_prompts_per_image_that_do_not_add_up_are_refused(ckpt):
    r = ckpt("tiny", seed=3)
    img = r.ours.encode_image(r.pixels(2, seed=13))
    qs = [q.tolist() for q in prompts_of(r, [2, 1, 4], seed=43)]
    for counts in ([1, 1], [3], [3, 0], [1, 1, 1]):
        with pytest.raises(ValueError, match="prompts_per_image"):
            r.ours.generate(image=img, input_ids=qs, prompts_per_image=counts, max_new_tokens=3)
    with pytest.raises(ValueError, match="prompts_per_image"):  # the hint where the counts are not even
        r.ours.generate(image=img, input_ids=qs, max_new_tokens=3)


@pytest.mark.parametrize("kw", [dict(num_beams=3, num_return_sequences=2), dict(num_beams=2, length_penalty=2.0)])
def test_video_beam_search_matches_transformers(ckpt, kw):
    r = ckpt("tiny-video")
    px, ids = r.pixels(2, seed=17), r.ids(2, 3, seed=17)
    for ids_ in (None, ids):
        ours = r.ours.generate(px, ids_, max_new_tokens=10, return_scores=True, **kw)
        ref = H.hf_generate(r, px, ids_, max_new_tokens=10, return_dict=True, **kw)
        assert_same(ours.sequences, ref.sequences)
        assert ((ours.scores - ref.sequences_scores).abs() <= SCORE_TOL(ref.sequences_scores)).all()


def test_fewer_video_frames_than_temporal_embeddings_match_transformers(ckpt):
    """2 frames for a 3-frame checkpoint: frames 0 and 1 get the first two embeddings, as in transformers
    (and the original); only more frames than embeddings is refused (see the errors below)."""
    r = ckpt("tiny-video")
    px = r.pixels(2, seed=18)[:, :2]  # (2, 2, 3, H, W)
    assert_same(r.ours.generate(px, max_new_tokens=10), H.hf_generate(r, px, max_new_tokens=10))


# ---------------------------------------------------------------- the image is encoded once
@pytest.mark.parametrize("name", ["tiny", "tiny-video"])
@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3, num_return_sequences=3),
                                dict(do_sample=True, num_return_sequences=4)], ids=["greedy", "beams", "sample"])
def test_vision_encoder_runs_once_per_image(ckpt, name, kw):
    r = ckpt(name)
    frames = r.ours.config.n_frames or 1
    with H.CountImages(r.ours) as c:
        r.ours.generate(r.pixels(3, seed=1), max_new_tokens=6, **kw)
    assert (c.calls, c.images) == (1, 3 * frames)
    with H.CountImages(r.ours) as c:  # one image, three questions
        r.ours.generate(r.pixels(1, seed=1), r.ids(3, 4, seed=1), max_new_tokens=6, **kw)
    assert (c.calls, c.images) == (1, frames)


def test_encoded_image_serves_several_prompts(ckpt):
    r = ckpt("tiny", seed=1)
    px = r.pixels(2, seed=11)
    img = r.ours.encode_image(px)
    for q in prompts_of(r, [2, 5, 3], seed=40):
        ids = q[None].expand(2, -1)
        with H.CountImages(r.ours) as c:
            out = r.ours.generate(image=img, input_ids=ids, max_new_tokens=10, num_beams=2)
        assert c.calls == 0
        assert_same(out, H.hf_generate(r, px, ids, max_new_tokens=10, num_beams=2))


# ---------------------------------------------------------------- sampling
SAMPLERS = [dict(), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8),
            dict(temperature=1.3, top_k=10, top_p=0.9), dict(top_p=0.9, num_return_sequences=3)]


@pytest.mark.parametrize("kw", SAMPLERS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_sampling_matches_transformers_for_the_same_seed(ckpt, kw):
    """transformers draws from the global generator; ours from the caller's. Seeded alike, torch.multinomial
    over the same probabilities draws the same tokens, so equal ids also check every warper."""
    r = ckpt("tiny", eos_bias=0.5)
    px, ids = r.pixels(4, seed=12), r.ids(4, 3, seed=12)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        ours = r.ours.generate(px, ids, do_sample=True, max_new_tokens=15, generator=g, **kw)
        torch.manual_seed(seed)
        assert_same(ours, H.hf_generate(r, px, ids, do_sample=True, max_new_tokens=15, **kw))


def test_same_generator_seed_same_output(ckpt):
    r = ckpt("tiny")
    px = r.pixels(4, seed=13)

    def run(seed, pixels):
        g = torch.Generator().manual_seed(seed)
        return r.ours.generate(pixels, do_sample=True, max_new_tokens=15, generator=g, num_return_sequences=2)

    first = run(0, px)
    assert_same(run(0, H.reference_pixels(px)), first)
    assert not torch.equal(run(1, px), first)


def test_top_k_1_is_greedy(ckpt):
    r = ckpt("tiny", seed=2)
    px, ids = r.pixels(4, seed=14), r.ids(4, 2, seed=14)
    sampled = r.ours.generate(px, ids, do_sample=True, top_k=1, temperature=0.5, max_new_tokens=15,
                              generator=torch.Generator().manual_seed(0))
    assert_same(sampled, H.hf_generate(r, px, ids, max_new_tokens=15))


def nucleus(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest set of most likely tokens whose mass reaches top_p, renormalised (written plainly)."""
    order = p.argsort(descending=True)
    keep, mass = [], 0.0
    for i in order.tolist():
        keep.append(i)
        mass += p[i].item()
        if mass >= top_p:
            break
    q = torch.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.6), dict(top_k=8), dict(top_p=0.5)],
                         ids=["plain", "temperature", "top_k", "top_p"])
def test_sampled_first_tokens_follow_the_softmax(ckpt, kw):
    """20,000 first tokens from one image and prompt against the (warped) softmax of transformers' logits.

    Pearson's chi-square over the k tokens that may be drawn follows chi2(k - 1): mean k - 1, standard
    deviation sqrt(2(k - 1)). The bound, 6 deviations above the mean, is exceeded by chance with
    probability < 4e-4 for every k here (the seed is fixed anyway), while the same test with the image
    shifted by +0.5 scores 2.5 times the bound or more. Tokens outside top-k / top-p must never be drawn.
    """
    r = ckpt("tiny")
    n = 20_000
    px, ids = r.pixels(1, seed=15), r.ids(1, 3, seed=15)
    out = r.ours.generate(px, ids, do_sample=True, max_new_tokens=1, num_return_sequences=n,
                          generator=torch.Generator().manual_seed(0), **kw)
    freq = torch.bincount(out[:, -1], minlength=r.ours.config.text.vocab_size).double() / n
    with torch.no_grad():
        logits = r.hf(pixel_values=H.reference_pixels(px), input_ids=ids).logits[0, -1].double()
    p = (logits / kw.get("temperature", 1.0)).softmax(-1)
    if "top_k" in kw:
        p = torch.where(p >= p.topk(kw["top_k"]).values[-1], p, 0.0)
        p = p / p.sum()
    if "top_p" in kw:
        p = nucleus(p, kw["top_p"])
    drawable = p > 0
    chi2 = n * ((freq - p)[drawable] ** 2 / p[drawable]).sum()
    df = int(drawable.sum()) - 1
    assert chi2 < df + 6 * (2 * df) ** 0.5, f"chi2 {chi2:.0f} with {df} degrees of freedom"
    assert (freq[~drawable] == 0).all()


# ---------------------------------------------------------------- streaming
def test_on_token_streams_every_step(ckpt):
    r = ckpt("tiny", eos_bias=1.0)
    px = r.pixels(3, seed=16)
    got = []
    out = r.ours.generate(px, max_new_tokens=12, on_token=lambda tok: got.append(tok.clone()))
    assert_same(torch.stack(got, dim=1), out[:, 1:])
    assert_same(out, H.hf_generate(r, px, max_new_tokens=12))


# ---------------------------------------------------------------- errors, before any compute
def _errors():
    """(case, request, the message it must raise)."""
    return [
        ("prompt + max_new_tokens", dict(ids=(1, 60), max_new_tokens=10),
         r"the longest prompt is 60 tokens long \(with \[CLS\]\); with max_new_tokens 10 it needs 69 text positions, "
         r"the model has 64"),
        ("prompt alone too long", dict(ids=(1, 70), max_new_tokens=1),
         r"the longest prompt is 70 tokens long \(with \[CLS\]\); with max_new_tokens 1 it needs 70 text positions, "
         r"the model has 64"),
        ("num_return_sequences > num_beams", dict(num_beams=2, num_return_sequences=3),
         r"num_return_sequences \(3\) > num_beams \(2\): beam search returns at most num_beams sequences"),
        ("greedy, several sequences", dict(num_return_sequences=2), r"num_return_sequences \(2\) > num_beams \(1\)"),
        ("batch mismatch", dict(ids=(2, 3), images=3), "batch mismatch: 3 images for 2 prompts"),
        ("prompts not a multiple of the images", dict(ids=(5, 3), images=2), "batch mismatch: 2 images for 5 prompts"),
        ("more frames than temporal embeddings", dict(name="tiny-video", frames=4),
         "got 4 video frames; this checkpoint has temporal embeddings for 3"),
        ("video for an image model", dict(frames=3),
         r"got video pixel_values \(5 dims\) but this checkpoint has no temporal embeddings"),
        ("early_stopping value", dict(num_beams=2, early_stopping="sometimes"),
         "early_stopping must be True, False or 'never', got 'sometimes'"),
        ("streaming beams", dict(num_beams=2, on_token=print), "on_token streams greedy or sampled tokens"),
        ("beam sampling", dict(num_beams=2, do_sample=True),
         r"do_sample and num_beams > 1 cannot be combined \(no beam sampling\)"),
        ("empty prompt", dict(ids=(1, 3), attention_mask=torch.zeros(1, 3, dtype=torch.long)),
         "empty prompt: every prompt needs at least one token"),
        ("mask shape", dict(ids=(1, 3), attention_mask=torch.ones(1, 4, dtype=torch.long)),
         r"attention_mask \(1, 4\) does not match input_ids \(1, 3\)"),
        ("pixels and image", dict(image=torch.zeros(1, 17, 32)), "give exactly one of pixel_values and image"),
        ("sampling settings", dict(do_sample=True, top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        ("a sampling option without sampling", dict(temperature=0.5),
         "temperature needs do_sample: without it decoding is greedy"),
        ("no beams", dict(num_beams=0), "num_beams must be at least 1, got 0"),
    ]


@pytest.mark.parametrize("case,spec,message", _errors(), ids=[c for c, _, _ in _errors()])
def test_bad_requests_fail_before_any_compute(ckpt, case, spec, message):
    spec = dict(spec)
    r = ckpt(spec.pop("name", "tiny"))
    images, frames = spec.pop("images", 1), spec.pop("frames", None)
    px = torch.randn(images, frames, 3, 32, 32) if frames else torch.randn(images, 3, 32, 32)
    ids = r.ids(*spec.pop("ids")) if "ids" in spec else None
    with H.CountImages(r.ours) as c, pytest.raises(ValueError, match=message):
        r.ours.generate(px, ids, **spec)
    assert c.calls == 0


def test_an_unknown_generation_option_is_a_type_error(ckpt):
    r = ckpt("tiny")
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_beam'"):
        r.ours.generate(r.pixels(1), num_beam=3)
