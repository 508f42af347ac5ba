"""Caption and VQA metrics, as the COCO caption and VQAv2 evaluation code computes them.

    bleu4(refs, hyps)     corpus BLEU-4, pycocoevalcap's Bleu: clipped n-gram precisions pooled over the
                          corpus, the "closest" reference length per caption for the brevity penalty
    cider_d(refs, hyps)   pycocoevalcap's Cider (which is CIDEr-D): tf-idf n-gram vectors (n = 1..4) with
                          document frequencies from the references, clipped hypothesis counts, a Gaussian
                          length penalty (sigma 6), x 10, averaged over references then images
    rouge_l(refs, hyps)   pycocoevalcap's Rouge: LCS-based F-measure with beta 1.2, from the best precision
                          and the best recall over the references; mean over images
    vqa_accuracy(pred, answers)  VQAv2's soft score with its answer normalisation
    distinct(hyps)        how many different captions a set of images got

`refs` maps an image id to its reference captions, `hyps` the same ids to one generated caption each.
Captions are tokenized by `tokenize` (lower case, punctuation dropped: the COCO PTB tokenizer's result on
plain English captions). Scores are fractions (BLEU 0.35, not 35).
"""

from __future__ import annotations

import math
import re
from collections import Counter

# ----------------------------------------------------------------------------- captions

# The punctuation the COCO evaluation's PTB tokenizer removes.
PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
               "...", ";"}
CIDER_SIGMA = 6.0  # CIDEr-D's length penalty width
ROUGE_BETA = 1.2


def tokenize(text: str) -> list[str]:
    """Lower-case words, punctuation removed (the PTB tokenizer also splits "dog's" into "dog 's")."""
    text = re.sub(r"([.,!?;:()\"]|--)", " ", text.lower())
    text = re.sub(r"(\w)('s|'re|'ve|'m|'ll|'d|n't)\b", r"\1 \2", text)
    return [w for w in text.split() if w not in PUNCTUATION]


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))


def _check(refs: dict, hyps: dict) -> None:
    if set(refs) != set(hyps):
        raise ValueError("refs and hyps must have the same image ids")
    if not hyps:
        raise ValueError("nothing to score")
    if any(not r for r in refs.values()):
        raise ValueError("every image needs at least one reference")


def bleu4(refs: dict, hyps: dict) -> float:
    _check(refs, hyps)
    correct, guess = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for key, hyp in hyps.items():
        h = tokenize(hyp)
        rs = [tokenize(r) for r in refs[key]]
        hyp_len += len(h)
        # the reference length closest to the hypothesis's, the shorter on a tie
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, 5):
            counts = ngrams(h, n)
            most = Counter()
            for r in rs:
                most |= ngrams(r, n)  # max count of each n-gram over the references
            correct[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            guess[n - 1] += max(0, len(h) - n + 1)
    # pycocoevalcap's smoothing constants: they keep log(0) away and move no real score.
    tiny, small = 1e-15, 1e-9
    score = math.prod((c + tiny) / (g + small) for c, g in zip(correct, guess)) ** 0.25
    ratio = (hyp_len + tiny) / (ref_len + small)
    return score * (math.exp(1 - 1 / ratio) if ratio < 1 else 1.0)


def _tfidf(counts: list[Counter], df: Counter, log_n: float) -> tuple[list[dict], list[float]]:
    """Per n: {ngram: tf * idf} and the vector's norm."""
    vecs, norms = [], []
    for c in counts:
        v = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in c.items()}
        vecs.append(v)
        norms.append(math.sqrt(sum(x * x for x in v.values())))
    return vecs, norms


def cider_d(refs: dict, hyps: dict) -> float:
    _check(refs, hyps)
    tok_refs = {k: [tokenize(r) for r in refs[k]] for k in hyps}
    df = Counter()  # in how many images' reference sets each n-gram occurs
    for rs in tok_refs.values():
        df.update({g for r in rs for n in range(1, 5) for g in ngrams(r, n)})
    log_n = math.log(len(hyps))
    total = 0.0
    for key, hyp in hyps.items():
        h = tokenize(hyp)
        hv, hn = _tfidf([ngrams(h, n) for n in range(1, 5)], df, log_n)
        score = 0.0
        for r in tok_refs[key]:
            rv, rn = _tfidf([ngrams(r, n) for n in range(1, 5)], df, log_n)
            penalty = math.exp(-((len(h) - len(r)) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(4):
                # NB: CIDEr-D clips the hypothesis's weights at the reference's (min), then cosine similarity
                dot = sum(min(w, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, w in hv[n].items())
                if hn[n] and rn[n]:
                    dot /= hn[n] * rn[n]
                score += dot * penalty / 4  # mean over n
        total += 10.0 * score / len(tok_refs[key])
    return total / len(hyps)


def lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(refs: dict, hyps: dict) -> float:
    _check(refs, hyps)
    total = 0.0
    for key, hyp in hyps.items():
        h = tokenize(hyp)
        rs = [tokenize(r) for r in refs[key]]
        common = [lcs(h, r) for r in rs]
        p = max((c / len(h) if h else 0.0) for c in common)
        r = max((c / len(ref) if ref else 0.0) for c, ref in zip(common, rs))
        if p and r:
            total += (1 + ROUGE_BETA**2) * p * r / (r + ROUGE_BETA**2 * p)
    return total / len(hyps)


def distinct(hyps) -> int:
    """The number of different captions (after tokenization) among the generated ones."""
    return len({" ".join(tokenize(h)) for h in (hyps.values() if isinstance(hyps, dict) else hyps)})


def caption_scores(refs: dict, hyps: dict) -> dict:
    """BLEU-4, CIDEr-D, ROUGE-L and the distinct-caption count of a set."""
    return {"bleu4": bleu4(refs, hyps), "cider_d": cider_d(refs, hyps), "rouge_l": rouge_l(refs, hyps),
            "distinct": distinct(hyps), "n": len(hyps)}


# ----------------------------------------------------------------------------- VQA

# VQAv2's vqaEval.py tables.
VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
             "!")
VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
VQA_ARTICLES = {"a", "an", "the"}
VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
# NB: vqaEval.py's "(?!<=\d)" was meant as a look-behind; as written it strips every period not
# followed by a digit, and we keep that behaviour.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")


def vqa_punctuation(text: str) -> str:
    out = text
    for p in VQA_PUNCT:
        # NB: punctuation beside a space (or anywhere, in a text with a digit-comma-digit) is deleted,
        # elsewhere replaced by a space: "black/white" -> "black white", "yes!" -> "yes".
        if p + " " in text or " " + p in text or _DIGIT_COMMA.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def vqa_digits_articles(text: str) -> str:
    words = [VQA_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words if w not in VQA_ARTICLES)


def vqa_normalize(answer: str) -> str:
    """An answer as vqaEval.py compares it: whitespace, punctuation, number words, articles, contractions."""
    return vqa_digits_articles(vqa_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    """VQAv2's soft accuracy of one prediction against the human answers (10 in VQAv2): for each answer
    left out in turn, min(1, matches among the others / 3); the mean over the turns. With a single answer
    (the shapes task, most VQA-style data sets of one's own) the leave-one-out would always give 0, so
    it is the exact match of the normalised answers instead."""
    if not answers:
        raise ValueError("no reference answers")
    res = vqa_normalize(pred)
    if len(answers) == 1:
        return float(res == vqa_normalize(answers[0]))
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:  # NB: as vqaEval.py, the humans' answers get only the punctuation step, and only
        gts = [vqa_punctuation(a) for a in gts]  # when they disagree (VQAv2's answers come pre-normalised)
    return sum(min(1.0, sum(g == res for g in gts[:i] + gts[i + 1:]) / 3) for i in range(len(gts))) / len(gts)
