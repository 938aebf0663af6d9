"""The ingest's settings, apart from the pipeline so that loading a config stays cheap."""

from __future__ import annotations

import codecs

from pydantic import Field, field_validator

from p2med.platform.config import Settings
from p2med.platform.data.deid import DeidSettings
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest_plan import SplitSettings
from p2med.platform.data.raw_store import TEXT_ENCODINGS


class IngestSettings(Settings):
    """How a raw store becomes shards."""

    imaging: ImagingSettings = ImagingSettings()
    """Image normalisation (sizes, CT window, geometry checks)."""
    deid: DeidSettings = DeidSettings()
    """De-identification key."""
    split: SplitSettings = SplitSettings()
    """Patient-level train / val / dev / test split."""
    shard_target_mb: float = Field(64.0, gt=0)
    """Target size of one Parquet shard in MB (before compression)."""
    blocks_per_cpu: int = Field(4, ge=1)
    """Ray Data blocks per CPU for each pass: more blocks balance load, fewer cost less."""
    text_encodings: list[str] = Field(default_factory=lambda: list(TEXT_ENCODINGS), min_length=1)
    """Encodings tried in order for each line of reports.jsonl and records.jsonl; a line
    none of them reads is quarantined (big5 for a traditional-Chinese export)."""

    @field_validator("text_encodings")
    @classmethod
    def _known_encodings(cls, encodings: list[str]) -> list[str]:
        for encoding in encodings:
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValueError(f"{encoding!r} is not an encoding Python knows") from None
        return encodings
