"""The `tiny` preset's tokenizer: byte-level BPE trained on the medical corpus.

    tok = train_bpe_tokenizer(texts, vocab_size=4096)
    tok.save_pretrained("runs/tokenizer")
    tok = load_tokenizer("runs/tokenizer")

Byte-level, as GPT-2 and LLaMA-3 do it, so any text encodes without `<unk>`. For a Chinese
corpus the trainer caps tokens at `CHINESE_TOKEN_BYTES`, three characters: written without
spaces, a Chinese clause is one "word" to byte-level pre-tokenization, and on a small
corpus of set phrasings BPE merged whole clauses into one token each (左肺下叶见斑片状影
and 右肺中叶可见斑片状密度增高影 one token apiece), so no lobe or finding was a token the
model could reuse across findings; capped, 左肺 and 下叶 are tokens of their own, as words
of one to three characters are in a Chinese LLaMA vocabulary. `<image>` is
a special token: it is never split or merged, so each placeholder is exactly one id that
the model replaces by an image's latents. Encoding prepends `<s>` (the LLaMA convention);
callers append `</s>` to targets themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import fsspec
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from p2med.model.files import copy_without_weights

IMAGE_TOKEN = "<image>"
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN)  # ids 0..4 in this order
CHINESE_TOKEN_BYTES = 9  # three Chinese characters of UTF-8: the longest token of a Chinese corpus


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, max_token_bytes: int | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with `SPECIAL_TOKENS` registered; no
    token longer than `max_token_bytes` bytes of UTF-8 (`CHINESE_TOKEN_BYTES` for a Chinese
    corpus), none without.

    Deterministic for the same texts in the same order.
    """
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges; use at least 512")
    core = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen in the corpus or not
        show_progress=False,
        max_token_length=max_token_bytes,  # counted in byte-level symbols: one per byte
    )
    core.train_from_iterator(texts, trainer=trainer)
    bos = core.token_to_id(BOS_TOKEN)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B:1", special_tokens=[(BOS_TOKEN, bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[IMAGE_TOKEN],
        padding_side="right",
    )


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved with `save_pretrained(directory)`, read from local disk only."""
    path = Path(directory)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (expected tokenizer.json from save_pretrained)")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tok.unk_token_id):
        raise ValueError(f"tokenizer at {path} has no {IMAGE_TOKEN} token; train it with train_bpe_tokenizer")
    return tok


def with_image_token(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """A pretrained LLM's tokenizer made ready for images: `<image>` added as a special
    token (its id may lie past the LLM's vocabulary: the model never embeds it) and a pad
    token set to `<unk>` or `</s>` when it has none, so no embedding row is added."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def pretrained_tokenizer(
    uri: str, local: str, fs: fsspec.AbstractFileSystem | None = None
) -> PreTrainedTokenizerFast:
    """The tokenizer of the pretrained LLM folder `uri` (local or remote), ready for images
    (`with_image_token`) and saved to the local folder `local`. Only the folder's tokenizer
    and config files are copied, never its weights. Reads a `tokenizer.json` or a
    sentencepiece `tokenizer.model` (LLaMA-2, Chinese-LLaMA-2), which transformers converts
    with the `sentencepiece` package.

    Raises:
        FileNotFoundError: `uri` is no folder.
        ValueError: the folder holds no tokenizer transformers can read.
    """
    copy_without_weights(uri, local, fs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"no tokenizer could be read from {uri} (it needs a tokenizer.json or a sentencepiece "
            f"tokenizer.model that transformers can load): {exc}"
        ) from exc
    tokenizer = with_image_token(tokenizer)
    tokenizer.save_pretrained(local)
    return tokenizer
