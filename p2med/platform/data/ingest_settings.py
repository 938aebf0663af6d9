"""The ingest's settings, apart from the pipeline so that loading a config stays cheap."""

from __future__ import annotations

from pydantic import Field

from p2med.platform.config import Settings
from p2med.platform.data.deid import DeidSettings
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.ingest_plan import SplitSettings


class IngestSettings(Settings):
    """How a raw store becomes shards."""

    imaging: ImagingSettings = ImagingSettings()
    """Image normalisation (sizes, CT window, geometry checks)."""
    deid: DeidSettings = DeidSettings()
    """De-identification key."""
    split: SplitSettings = SplitSettings()
    """Patient-level train / val / bench split."""
    shard_target_mb: float = Field(64.0, gt=0)
    """Target size of one Parquet shard in MB (before compression)."""
    blocks_per_cpu: int = Field(4, ge=1)
    """Ray Data blocks per CPU for each pass: more blocks balance load, fewer cost less."""
