"""What de-identification must know of Chinese text: how names are spelled (in characters
and in pinyin), how addresses break into parts, and the formats of Chinese identifiers.

Chinese has no spaces: a name stands between other characters ("患儿张伟于..."), so values
written in characters are matched wherever they stand, and digit formats are bounded by
digits, not by word boundaries. A given name alone is scrubbed from two characters on; a
family name alone only before a title or form of address (张医生, 王女士): one character
is too common inside words (扩张, 王 in 王氏...).
"""

from __future__ import annotations

import functools
import itertools
import re

from p2med.platform.data.language import CJK

HAS_CJK = re.compile(f"[{CJK}]")
_COMPOUND_FAMILY_NAMES = """
    欧阳 司马 诸葛 上官 东方 皇甫 尉迟 公孙 慕容 司徒 夏侯 令狐 宇文 长孙 端木
    独孤 南宫 轩辕 万俟 闻人 西门 申屠 澹台 呼延 完颜 钟离 百里 东郭 公冶 太史
"""
COMPOUND_FAMILY_NAMES = frozenset(_COMPOUND_FAMILY_NAMES.split())
"""Two-character family names (the common ones); any other family name is one character."""
_TITLES = "医生 大夫 医师 主任 教授 护士 护士长 老师 先生 女士 小姐 阿姨 叔叔 奶奶 爷爷 同学 某 某某"
TITLES = tuple(_TITLES.split())
"""Titles and forms of address written after a family name: 张医生, 李主任, 王女士."""
MOST_READINGS = 16  # pinyin spellings of one name, over its characters' readings
ADDRESS_PART = re.compile(
    rf"[{CJK}]{{2,}}?(?:自治区|自治州|特别行政区|省|市|区|县|旗|镇|乡|街道|村|社区|小区|大道|路|街|巷|弄|胡同)"
)
HOUSE_NUMBER = re.compile(r"[0-9]+号")

_D = r"[0-9]"
_ALONE = r"(?<![0-9A-Za-z])"
_CN_NUMERAL = "〇零一二三四五六七八九十"
# a character of a road's name: not one of the words that come before one ("家住", "于")
_PLACE_CHARACTER = rf"(?:[{CJK}](?<![于在至到住从由自经向往近沿和及与的了是为家儿者]))"
IDENTIFYING_PATTERNS = [
    # dates: 2024年3月4日, 2024年03月, 3月4日, 二〇二四年三月四日, 2024.3.4, 2024/3/4, 2024-3-4
    rf"(?<!{_D}){_D}{{4}}\s*年\s*{_D}{{1,2}}\s*月(?:\s*{_D}{{1,2}}\s*[日号])?",
    rf"(?<!{_D}){_D}{{1,2}}\s*月\s*{_D}{{1,2}}\s*[日号]",
    rf"[{_CN_NUMERAL}]{{2,4}}年[{_CN_NUMERAL}]{{1,2}}月(?:[{_CN_NUMERAL}]{{1,3}}[日号])?",
    rf"(?<!{_D})(?:19|20){_D}{{2}}[./-]{_D}{{1,2}}[./-]{_D}{{1,2}}(?!{_D})",
    # resident ID numbers: 18 digits (the last may be X), 15 for the old ones, groups spaced or not
    rf"{_ALONE}{_D}{{6}}[ -]?(?:18|19|20){_D}{{2}}[01]{_D}[0-3]{_D}[ -]?{_D}{{3}}[0-9Xx](?![0-9A-Za-z])",
    rf"{_ALONE}{_D}{{15}}(?![0-9A-Za-z])",
    # mobile numbers (+86 138 1234 5678, 138-1234-5678) and landlines (010-12345678, (0755)1234567)
    rf"(?<!{_D})(?:\+?86[ -]?)?1[3-9]{_D}(?:[ -]?{_D}{{4}}){{2}}(?!{_D})",
    rf"(?<!{_D})(?:\(0{_D}{{2,3}}\)|0{_D}{{2,3}})[ -]?{_D}{{7,8}}(?:[ -]?转{_D}{{1,5}})?(?!{_D})",
    # record numbers after their label: 门诊号: MZ20240301, 住院号 123456, 身份证号码 ...
    r"(?:门诊|住院|病案|病历|登记|就诊卡|医保卡|社保卡|影像|检查|检验|床|身份证|证件)号(?:码)?\s*[:：]?\s*[A-Za-z]*[0-9][0-9A-Za-z-]*",
    # a road and its number: 文三路123号, 幸福小区5栋2单元301室
    rf"{_PLACE_CHARACTER}{{1,5}}(?:路|街|大道|巷|弄|胡同){_D}+号(?:{_D}+(?:栋|幢|号楼|单元|楼|层|室))*",
    # long digit runs: ID, phone and record numbers in formats not listed above
    rf"(?<!{_D}){_D}{{9,}}(?!{_D})",
]


class SimplifiedView(dict):
    """A `str.translate` table that also reads each traditional Chinese character as its
    simplified form, one character for one: '張偉' in a record then matches the header's
    '张伟', and the other way round. Characters are converted (OpenCC's t2s, one at a
    time, so the same character always reads the same) when first met."""

    def __missing__(self, code: int) -> int:
        character = chr(code)
        simplified = _to_simplified(character) if HAS_CJK.match(character) else character
        self[code] = ord(simplified) if len(simplified) == 1 else code
        return self[code]


@functools.cache
def _simplifier():
    import opencc  # here, as pypinyin is (`_pinyin`): most processes never see Chinese

    return opencc.OpenCC("t2s")


def _to_simplified(character: str) -> str:
    return _simplifier().convert(character)


def has_cjk(text: str) -> bool:
    return HAS_CJK.search(text) is not None


def chinese_name_spellings(family: str, given: str) -> set[str]:
    """A name in characters as Chinese text writes it: whole (张伟, 张 伟, 欧阳子涵), the given
    name alone from two characters on, the family name before a title (张医生)."""
    forms = {family + given, f"{family} {given}", f"{family}·{given}"}
    if len(given) >= 2:
        forms.add(given)
    forms |= {family + title for title in TITLES}
    return {form for form in forms if form.strip()}


def split_chinese_name(name: str) -> tuple[str, str]:
    """(family, given) of a name in text order: a compound family name, else the first character."""
    name = re.sub(r"\s+|·", "", name)
    cut = 2 if name[:2] in COMPOUND_FAMILY_NAMES and len(name) > 2 else 1
    return name[:cut], name[cut:]


def pinyin_names(family: str, given: str) -> list[tuple[str, str]]:
    """(family, given) in pinyin, every reading of each character (单 dan, shan, chan), at
    most `MOST_READINGS`: "Zhang", "Xiaoming" for 张, 晓明."""
    family_readings = _readings(family)
    given_readings = _readings(given)
    pairs = itertools.islice(itertools.product(family_readings, given_readings), MOST_READINGS)
    return [(f.capitalize(), g.capitalize()) for f, g in pairs]


def given_pinyin_forms(given: str) -> set[str]:
    """A pinyin given name of several syllables as text writes it: "Xiaoming", "Xiao Ming",
    "Xiao-ming"."""
    syllables = [reading[0] for reading in _pinyin(given, heteronym=False)]
    if len(syllables) < 2:
        return set()
    return {
        " ".join(s.capitalize() for s in syllables),
        "-".join(syllables).capitalize(),
        "".join(syllables).capitalize(),
    }


def address_parts(address: str) -> set[str]:
    """The parts of a Chinese address a text may name alone: 浙江省, 杭州市, 西湖区, 文三路..."""
    parts = {part for part in ADDRESS_PART.findall(address) if len(part) >= 3}
    if parts and (number := HOUSE_NUMBER.search(address)):  # the street with its number: 文三路123号
        street = next((part for part in parts if address.find(part) + len(part) == number.start()), None)
        parts |= {street + number.group()} if street else set()
    return parts


def _readings(characters: str) -> list[str]:
    per_character = _pinyin(characters, heteronym=True)
    return ["".join(combination) for combination in itertools.product(*per_character)][:MOST_READINGS]


def _pinyin(characters: str, heteronym: bool) -> list[list[str]]:
    """The readings of each character, toneless. pypinyin is imported here, when a name in
    characters is first met: loading its dictionaries costs every process that imports
    de-identification about 0.2 s, and most never see Chinese."""
    from pypinyin import Style, pinyin

    return pinyin(characters, style=Style.NORMAL, heteronym=heteronym)
