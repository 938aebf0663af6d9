"""Text overlap of a prediction with its reference (ROUGE-L, BLEU-4, on 0..1), tokenized in
the reference's language (`text_language`): English as rouge-score and sacrebleu's 13a
tokenizer do, Chinese by character (rouge-score would drop every Chinese character;
sacrebleu's `zh` tokenizer splits characters and keeps Latin words whole).

A corpus BLEU pools the n-gram counts of every sample, each tokenized in its own
reference's language.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

from p2med.platform.data.language import CJK, text_language


class _CharacterTokenizer:
    """Chinese for ROUGE-L: each character a token, and each run of Latin letters or digits
    (English terms, lab values) one, lower-cased; punctuation dropped as rouge-score does."""

    _TOKEN = re.compile(f"[{CJK}]|[a-z0-9]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())


# rougeL (not rougeLsum) never calls nltk's sentence splitter, so no nltk data is needed.
_ROUGE = {
    "en": rouge_scorer.RougeScorer(["rougeL"]),
    "zh": rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharacterTokenizer()),
}
_BLEU_TOKENIZERS = {"en": Tokenizer13a(), "zh": TokenizerZh()}


def rouge_l(prediction: str, reference: str) -> float:
    scorer = _ROUGE[text_language(reference)]
    return float(scorer.score(reference, prediction)["rougeL"].fmeasure)


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (with its effective n-gram order for short texts)."""
    tokenize = _BLEU_TOKENIZERS[text_language(reference)]
    return _unit(sacrebleu.sentence_bleu(tokenize(prediction), [tokenize(reference)], tokenize="none").score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """BLEU-4 of the pairs, n-gram counts pooled, each pair in its reference's language."""
    tokenized_predictions, tokenized_references = [], []
    for prediction, reference in zip(predictions, references, strict=True):
        tokenize = _BLEU_TOKENIZERS[text_language(reference)]
        tokenized_predictions.append(tokenize(prediction))
        tokenized_references.append(tokenize(reference))
    return _unit(sacrebleu.corpus_bleu(tokenized_predictions, [tokenized_references], tokenize="none").score)


def _unit(bleu: float) -> float:
    """sacrebleu's 0..100 score on 0..1; its float error can put a perfect match just above 100."""
    return min(bleu / 100, 1.0)
