"""GIT's tokenizer: uncased BERT WordPiece, run by the `tokenizers` library.

Every published GIT checkpoint uses the bert-base-uncased vocabulary: [PAD]=0, [UNK]=100,
[CLS]=101 (GIT's bos), [SEP]=102 (GIT's eos). A prompt is encoded as [CLS] + tokens with no
[SEP], so the model continues it; generation stops when it emits [SEP].

Ids equal transformers' BertTokenizerFast on the same files, and so does decode: the WordPiece
decoder joins "##" pieces and tidies spaces before punctuation (its `cleanup`), and transformers
5 adds its own `clean_up_tokenization` replacements only when `tokenizer_config.json` sets
`clean_up_tokenization_spaces: true` (default false), which we honour the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _Backend
from tokenizers import decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

SPECIAL_DEFAULTS = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                    "unk_token": "[UNK]", "mask_token": "[MASK]"}


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError as e:  # not JSON, or not UTF-8
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a JSON object")
    return d


def _token_str(t) -> str:
    # tokenizer_config.json may store a special token as {"content": "[CLS]", ...}.
    return t["content"] if isinstance(t, dict) else t


def build_wordpiece(vocab_file: Path, config: dict, specials: dict) -> _Backend:
    """The uncased BERT pipeline from vocab.txt, as transformers' BertTokenizer builds it."""
    # NB: one token per line with only "\n" stripped, as transformers' load_vocab reads it;
    # a repeated token keeps its last line number.
    lines = vocab_file.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline, not an empty token
    vocab = {tok: i for i, tok in enumerate(lines)}
    tok = _Backend(WordPiece(vocab, unk_token=specials["unk_token"], max_input_chars_per_word=100))
    lower = config.get("do_lower_case", True)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),  # None: follow lowercase, as in the original BERT
        lowercase=lower,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # Special tokens written literally in a prompt ("[MASK]") map to their ids, unnormalised.
    tok.add_special_tokens(list(specials.values()))
    return tok


def special_id_differences(tok: "Tokenizer", bos: int, eos: int, pad: int, config: str = "config.json") -> list[str]:
    """Where the tokenizer numbers [CLS]/[SEP]/[PAD] otherwise than `config` numbers bos/eos/pad: one phrase each."""
    pairs = (("cls_token", tok.cls_id, "bos", bos), ("sep_token", tok.sep_id, "eos", eos),
             ("pad_token", tok.pad_id, "pad", pad))
    return [f"{tok.specials[name]} is {a} in the tokenizer, {what} {b} in {config}" for name, a, what, b in pairs
            if a != b]


def special_ids_disagree(tok: "Tokenizer", bos: int, eos: int, pad: int, where) -> str | None:
    """None when a checkpoint's tokenizer and config.json agree on the special ids, else the warning saying which
    differ. Such a checkpoint starts, ends and pads text otherwise than its config says: captions start from the
    tokenizer's [CLS], transformers' unprompted ones from the config's bos."""
    said = special_id_differences(tok, bos, eos, pad)
    if not said:
        return None
    return (f"{where}: the tokenizer and config.json disagree: {'; '.join(said)}. Prompts are built with the "
            "tokenizer's ids and generation uses config.json's: correct whichever file is wrong")


def clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization: drop the space before punctuation and English contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class Tokenizer:
    """Prompt text <-> token ids for GIT. Build with `Tokenizer.from_pretrained(checkpoint_dir)`."""

    def __init__(self, backend: _Backend, specials: dict | None = None, clean_up_spaces: bool = False):
        self.backend = backend
        # tokenizer.json may carry fixed padding/truncation (e.g. pad everything to 128);
        # transformers overrides them per call, we switch them off.
        backend.no_padding()
        backend.no_truncation()
        self.specials = {**SPECIAL_DEFAULTS, **(specials or {})}
        self.clean_up_spaces = clean_up_spaces
        ids = {}
        for name, token in self.specials.items():
            ids[name] = backend.token_to_id(token)
            if ids[name] is None and name != "mask_token":
                raise ValueError(f"special token {token!r} ({name}) is not in the vocabulary")
        self.cls_id, self.sep_id = ids["cls_token"], ids["sep_token"]
        self.pad_id, self.unk_id = ids["pad_token"], ids["unk_token"]

    @classmethod
    def from_pretrained(cls, path) -> "Tokenizer":
        """Load `tokenizer.json` if present, else build the WordPiece pipeline from `vocab.txt`
        and `tokenizer_config.json` (do_lower_case, strip_accents, tokenize_chinese_chars)."""
        path = Path(path)
        config = _read_json(path / "tokenizer_config.json")
        specials = {**SPECIAL_DEFAULTS}
        for source in (_read_json(path / "special_tokens_map.json"), config):
            specials.update({k: _token_str(v) for k, v in source.items() if k in SPECIAL_DEFAULTS and v})
        if (path / "tokenizer.json").exists():
            try:
                backend = _Backend.from_file(str(path / "tokenizer.json"))
            except Exception as e:  # the tokenizers library raises a bare Exception
                raise ValueError(f"{path / 'tokenizer.json'}: not a tokenizer file the tokenizers library can "
                                 f"read ({' '.join(str(e).split())})") from None
        elif (path / "vocab.txt").exists():
            backend = build_wordpiece(path / "vocab.txt", config, specials)
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt")
        return cls(backend, specials, bool(config.get("clean_up_tokenization_spaces", False)))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """A prompt -> [CLS] + its token ids (no [SEP]: GIT continues the prompt)."""
        return [self.cls_id] + self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Prompts -> unpadded id lists, each [CLS] + tokens."""
        return [[self.cls_id] + e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Ids (list, or 1-D tensor/array) -> text, special tokens dropped by default."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def batch_decode(self, seqs, skip_special_tokens: bool = True) -> list[str]:
        """A (B, T) tensor/array or list of id lists -> B strings."""
        seqs = seqs.tolist() if hasattr(seqs, "tolist") else seqs
        return [self.decode(s, skip_special_tokens) for s in seqs]
