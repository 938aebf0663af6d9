"""Which language a text is written in, as far as the platform needs to know: Chinese
(written in characters, with or without English terms and lab units among them) or
English. Scores tokenize by it, Chinese by character."""

from __future__ import annotations

import re
from typing import Literal

Language = Literal["en", "zh"]
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""Chinese characters (CJK unified ideographs, extension A, compatibility ideographs)."""
_CHARACTER, _LATIN_LETTER = re.compile(f"[{CJK}]"), re.compile("[A-Za-z]")
CHINESE_SHARE = 0.3
"""A text is Chinese when characters are at least this share of its letters and characters:
a Chinese report with English terms ("右下肺野见斑片影，WBC 12.3") is Chinese."""


def text_language(text: str) -> Language:
    characters = len(_CHARACTER.findall(text))
    letters = len(_LATIN_LETTER.findall(text))
    return "zh" if characters and characters >= CHINESE_SHARE * (characters + letters) else "en"
