"""Reading a raw store's JSONL: every line judged alone, whatever its encoding."""

from __future__ import annotations

import json

from p2med.platform.data.quarantine import Reason
from p2med.platform.data.raw_store import RECORDS_FILE, read_jsonl
from p2med.platform.storage import resolve


def test_utf8_and_gbk_lines_are_read_and_a_line_of_neither_is_quarantined(tmp_path):
    chinese = {"patient_id": "MZ0000000001", "sections": {"主诉": "发热、咳嗽3天"}}
    lines = [
        "\ufeff".encode() + json.dumps({"patient_id": "P1"}).encode(),  # a byte-order mark first
        json.dumps(chinese, ensure_ascii=False).encode("gbk"),  # a GBK line among UTF-8 ones
        json.dumps({"patient_id": "P2", "sections": {"主诉": "气促"}}, ensure_ascii=False).encode(),
        b'{"patient_id": "\xff\xfe"}',  # neither UTF-8 nor GB18030
        b"",
        json.dumps({"patient_id": "P3"}).encode(),
    ]
    (tmp_path / RECORDS_FILE).write_bytes(b"\r\n".join(lines))
    rows, bad = read_jsonl(resolve(str(tmp_path)), RECORDS_FILE)
    assert [row["patient_id"] for row in rows] == ["P1", "MZ0000000001", "P2", "P3"]
    assert rows[1] == chinese
    assert [(q.input, q.reason) for q in bad] == [(f"{RECORDS_FILE}:4", Reason.MALFORMED_JSONL)]
    assert "utf-8 or gb18030" in bad[0].detail and "\\xff" not in bad[0].detail
