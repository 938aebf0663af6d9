"""The tiny tokenizer: `<image>` is one id, save/load round trips, special ids are set.
A pretrained LLM's tokenizer (a LLaMA sentencepiece `tokenizer.model`) read from its
folder without its weights."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece
from transformers import LlamaConfig

from p2med.model.tokenizer import (
    BOS_TOKEN,
    CHINESE_TOKEN_BYTES,
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    load_tokenizer,
    pretrained_tokenizer,
    train_bpe_tokenizer,
)
from p2med.platform.storage import resolve

CORPUS = [
    "Findings: Airspace consolidation is seen in the right lower lobe. No pleural effusion.",
    "Impression: Consolidation in the right lower lobe, consistent with pneumonia.",
    "History: a 3-year-old boy with fever, cough for 4 days. No known drug allergies.",
    "Plan: Oral amoxicillin 450 mg twice daily for 5 days. Review in 2 days.",
] * 20
TEXT = f"{IMAGE_TOKEN}\nWrite the report.{IMAGE_TOKEN}image<image>s <imag> consolidation, 37.5 °C"


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CORPUS, vocab_size=512)


def test_image_token_is_always_one_id(tokenizer):
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = tokenizer(TEXT).input_ids
    assert ids.count(image_id) == 3
    assert tokenizer.tokenize(IMAGE_TOKEN) == [IMAGE_TOKEN]
    # glued to text or to itself, it never merges with its neighbours
    assert tokenizer(IMAGE_TOKEN * 4, add_special_tokens=False).input_ids == [image_id] * 4


def test_special_ids_set_and_bos_prepended(tokenizer):
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    assert None not in ids and len(ids) == 4
    assert tokenizer.convert_ids_to_tokens([tokenizer.pad_token_id, tokenizer.eos_token_id]) == [
        PAD_TOKEN,
        EOS_TOKEN,
    ]
    assert tokenizer("fever").input_ids[0] == tokenizer.bos_token_id
    assert tokenizer("fever", add_special_tokens=False).input_ids[0] != tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(tokenizer.bos_token_id) == BOS_TOKEN
    assert tokenizer.padding_side == "right"


def test_any_text_encodes_without_unk_and_decodes_back(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == TEXT


def test_save_load_round_trip_gives_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    loaded = load_tokenizer(tmp_path / "tok")
    for text in [TEXT, *CORPUS[:4]]:
        assert loaded(text).input_ids == tokenizer(text).input_ids
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert len(loaded) == len(tokenizer)


def test_training_is_deterministic():
    a, b = train_bpe_tokenizer(CORPUS, vocab_size=512), train_bpe_tokenizer(CORPUS, vocab_size=512)
    assert a(TEXT).input_ids == b(TEXT).input_ids


def test_load_names_a_missing_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path)


SENTENCEPIECE_VOCAB = 320  # bytes (byte fallback) and the texts' characters, with some merges
LLAMA = LlamaConfig(
    vocab_size=SENTENCEPIECE_VOCAB,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
)


def write_sentencepiece_llm(folder: Path) -> None:
    """A LLaMA folder as LLaMA-2 and Chinese-LLaMA-2 ship: config.json, a sentencepiece
    tokenizer.model with its tokenizer_config.json, and weights (a stand-in file)."""
    texts = ["患儿咳嗽三天，伴发热。右下肺见片状实变影。", "Consolidation in the right lower lobe."] * 40
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=SENTENCEPIECE_VOCAB, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "bos_token": "<s>",
        "eos_token": "</s>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    LLAMA.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)


@pytest.mark.s3
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_sentencepiece_llama_tokenizer_loads_without_the_weights(where, tmp_path, request):
    write_sentencepiece_llm(tmp_path / "llama")
    uri, fs = str(tmp_path / "llama"), None
    if where == "s3":
        bucket = request.getfixturevalue("bucket")
        fs = resolve(f"s3://{bucket}", request.getfixturevalue("s3_storage")).fs
        fs.put(uri + "/", f"{bucket}/bases/llama/", recursive=True)
        uri = f"s3://{bucket}/bases/llama"
    tok = pretrained_tokenizer(uri, str(tmp_path / "copy"), fs)
    assert not (tmp_path / "copy" / "model.safetensors").exists()
    text = "患儿咳嗽三天，右下肺实变。"
    ids = tok(f"{IMAGE_TOKEN}\n{text}").input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 1
    assert tok.decode(ids, skip_special_tokens=True).strip() == text
    assert tok.pad_token is not None
    assert load_tokenizer(tmp_path / "copy").convert_tokens_to_ids(IMAGE_TOKEN) == ids[1]


def test_a_folder_without_a_readable_tokenizer_is_named(tmp_path):
    LLAMA.save_pretrained(tmp_path / "llama")  # a config, no tokenizer
    with pytest.raises(ValueError, match=r"no tokenizer could be read from .*llama"):
        pretrained_tokenizer(str(tmp_path / "llama"), str(tmp_path / "copy"))
    write_sentencepiece_llm(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "tokenizer.model").write_bytes(b"not a sentencepiece model" * 10)
    with pytest.raises(ValueError, match=r"no tokenizer could be read from .*corrupt"):
        pretrained_tokenizer(str(tmp_path / "corrupt"), str(tmp_path / "copy2"))
    with pytest.raises(FileNotFoundError, match=r"no model folder at .*nowhere"):
        pretrained_tokenizer(str(tmp_path / "nowhere"), str(tmp_path / "copy"))


def test_a_chinese_corpus_gets_word_sized_tokens_that_round_trip():
    """Capped at three characters' bytes, a clause seen forty times is cut into pieces;
    uncapped, it is one token."""
    chinese = ["影像所见：左肺下叶见斑片状影，边缘模糊。", "印象：右肺中叶斑片状影。阿莫西林 450 mg"] * 40
    capped = train_bpe_tokenizer(CORPUS + chinese, vocab_size=1024, max_token_bytes=CHINESE_TOKEN_BYTES)
    text = "右肺下叶见斑片状影，WBC 12.3。"
    ids = capped(text, add_special_tokens=False).input_ids
    assert all(len(capped.decode([i]).encode()) <= CHINESE_TOKEN_BYTES for i in ids)
    assert capped.decode(ids) == text
    uncapped = train_bpe_tokenizer(CORPUS + chinese, vocab_size=1024)
    assert len(uncapped.tokenize("左肺下叶见斑片状影")) == 1
