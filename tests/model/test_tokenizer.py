"""The tiny tokenizer: `<image>` is one id, save/load round trips, special ids are set."""

from __future__ import annotations

import pytest

from p2med.model.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    load_tokenizer,
    train_bpe_tokenizer,
)

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
