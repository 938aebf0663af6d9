"""De-identification building blocks: keyed pseudonyms, name spellings, text scrubbing."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from p2med.platform.data.deid import (
    DeidSettings,
    Pseudonymizer,
    Scrubber,
    header_identifiers,
    name_spellings,
    resolve_key,
    value_spellings,
)
from p2med.platform.errors import P2MedError


def test_pseudonyms_are_stable_and_keyed():
    a, b = Pseudonymizer(b"key-a"), Pseudonymizer(b"key-b")
    assert a.pseudonym("patient", "MRN1") == a.pseudonym("patient", "MRN1")
    assert a.pseudonym("patient", "MRN1") != b.pseudonym("patient", "MRN1")
    assert a.pseudonym("patient", "MRN1") != a.pseudonym("input", "MRN1")
    assert "MRN1" not in a.pseudonym("patient", "MRN1")
    assert 0 <= a.unit_interval("split", "MRN1") < 1


def test_key_comes_from_config_or_environment(monkeypatch):
    monkeypatch.delenv("P2MED_DEID_KEY", raising=False)
    with pytest.raises(P2MedError, match="no de-identification key"):
        resolve_key(DeidSettings())
    monkeypatch.setenv("P2MED_DEID_KEY", "from-env")
    assert resolve_key(DeidSettings()) == b"from-env"
    assert resolve_key(DeidSettings(key="from-config")) == b"from-config"


def test_name_spellings():
    assert {"Smith^Emma", "Emma Smith", "Smith", "Emma"} <= name_spellings("Smith^Emma")
    assert {"Anna Lee", "Anna", "Lee"} <= name_spellings("Dr. Anna Lee")


def test_scrubber_removes_values_and_patterns():
    scrub = Scrubber(name_spellings("Smith^Emma") | {"MRN123", "12 Elm Close"})
    text = (
        "Emma Smith (MRN123), 12 Elm Close, seen 2024-03-05 and 05/03/2024 (20240305) by Dr. Tom Okafor; "
        "call 555-123-4567. Emma's chest: Emmanuel is another child. ACC12345678X."
    )
    clean = scrub(text)
    for leaked in ("Emma", "Smith", "MRN123", "Elm", "2024", "Okafor", "555", "ACC123"):
        assert leaked not in clean.replace("Emmanuel", ""), leaked
    assert "Emmanuel" in clean  # whole words only: another name is left alone
    assert "[REDACTED]'s chest" in clean


def test_header_identifiers_cover_names_ids_and_institution():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    values = header_identifiers(ds)
    assert str(ds.PatientID) in values and str(ds.InstitutionName) in values
    assert any(part in values for part in str(ds.PatientName).split("^") if part)


def test_names_are_scrubbed_in_any_case_and_order_and_ordinary_words_only_as_names():
    scrub = Scrubber(name_spellings("WETZEL^EMMA") | name_spellings("May MacDonald") | {"MRN4471923"})
    text = (
        "Emma Wetzel (WETZEL, EMMA; wetzel emma; E. Wetzel) came with her mother May; "
        "Mrs May was told. Dr. MacDonald saw her. It may be mild."
    )
    clean = scrub(text)
    for leaked in ("Emma", "EMMA", "emma", "Wetzel", "WETZEL", "wetzel", "E. ", "MacDonald", "Donald"):
        assert leaked not in clean, (leaked, clean)
    assert "mother [REDACTED]" in clean and "Mrs [REDACTED]" in clean
    assert "It may be mild." in clean  # an ordinary word stays where it is not a name


@pytest.mark.parametrize(
    "identifier",
    [
        "MRN: 4471923",
        "mrn #4471923",
        "Accession no. 88123456",
        "4 March 2024",
        "4th of March, 2024",
        "March 4, 2024",
        "03.04.2024",
        "3/4/24",
        "2024-03-04",
        "+44 20 7946 0958",
        "+49 (0)30 1234567",
        "020 7946 0958",
        "(617) 555-0147",
        "jo.smith+clinic@example.org",
    ],
)
def test_identifier_formats_are_scrubbed_by_pattern(identifier):
    clean = Scrubber([])(f"Seen on {identifier} for cough; WBC 12.3, T 38.5 C, SpO2 92%, 2 x 3 cm.")
    assert clean == "Seen on [REDACTED] for cough; WBC 12.3, T 38.5 C, SpO2 92%, 2 x 3 cm.", clean


def test_chinese_identifiers_are_scrubbed_between_characters():
    scrub = Scrubber(name_spellings("张伟") | {"13812345678"})
    assert (
        scrub("患儿张伟，2024年3月4日就诊，电话13812345678。")
        == "患儿[REDACTED]，[REDACTED]就诊，电话[REDACTED]。"
    )


def test_chinese_names_in_every_spelling():
    names = (
        name_spellings("Zhang^Xiaoming=张^晓明")
        | name_spellings("李秀英")
        | name_spellings("欧阳建国 主任医师")
    )
    scrub = Scrubber(names)
    text = (
        "患儿晓明由母亲李秀英陪同；张晓明、张 晓明。Zhang Xiaoming (ZHANG XIAOMING, Xiao Ming, Xiao-ming, "
        "X. Zhang) was seen. 欧阳主任查房，欧阳建国医师签字。张医生。Shan Wei is another child."
    )
    clean = scrub(text)
    for leaked in ("晓明", "秀英", "李秀", "欧阳", "建国", "Zhang", "ZHANG", "Xiao", "张医生"):
        assert leaked not in clean, (leaked, clean)
    assert "Shan Wei is another child" in clean
    assert {"Zhang Xiaoming", "Xiaoming Zhang", "Ouyang Jianguo"} <= names  # pinyin of the characters


def test_names_and_labels_in_traditional_characters_match_simplified_ones_and_back():
    header_simplified = Scrubber(name_spellings("Chen^Guohua=陈^国华") | {"台北市中正区"})
    text = "患兒陳國華，住址臺北市中正區；國華咳嗽三天。門診號：A123456。"
    assert header_simplified(text) == "患兒[REDACTED]，住址[REDACTED]；[REDACTED]咳嗽三天。[REDACTED]。"
    header_traditional = Scrubber(name_spellings("陳國華"))
    assert header_traditional("患儿陈国华；国华。") == "患儿[REDACTED]；[REDACTED]。"


def test_a_single_character_family_name_is_scrubbed_only_as_a_name():
    scrub = Scrubber(name_spellings("张伟") | name_spellings("He^Jing=何^静"))
    text = "张医生：支气管扩张，张力性气胸。He was admitted with an opacity; Dr He saw him; 何静."
    assert scrub(text) == (
        "[REDACTED]：支气管扩张，张力性气胸。He was admitted with an opacity; [REDACTED] saw him; [REDACTED]."
    )


@pytest.mark.parametrize(
    "identifier",
    [
        "2024年3月4日",
        "2024 年 03 月 04 日",
        "二〇二四年三月四日",
        "3月4日",
        "2024.3.4",
        "2024/03/04",
        "20240304",
        "110101201503041234",
        "11010120150304123X",
        "110101 20150304 1234",
        "１１０１０１２０１５０３０４１２３４",  # full-width digits
        "13812345678",
        "+86 138 1234 5678",
        "１３８－１２３４－５６７８",
        "010-12345678",
        "（0755）87654321",
        "门诊号：MZ20240301",
        "住院号 ZY123456",
        "文三路123号5栋2单元301室",
    ],
)
def test_chinese_identifier_formats_are_scrubbed_by_pattern(identifier):
    clean = Scrubber([])(f"患儿于{identifier}因咳嗽就诊，体温38.5℃，WBC 12.3×10^9/L，右下肺2×3cm片影。")
    assert clean == "患儿于[REDACTED]因咳嗽就诊，体温38.5℃，WBC 12.3×10^9/L，右下肺2×3cm片影。", clean


def test_a_chinese_address_is_scrubbed_whole_and_in_parts():
    scrub = Scrubber(value_spellings("浙江省杭州市西湖区文三路123号"))
    assert (
        scrub("住址：浙江省杭州市西湖区文三路123号。来自杭州市，西湖区人。")
        == "住址：[REDACTED]。来自[REDACTED]，[REDACTED]人。"
    )
