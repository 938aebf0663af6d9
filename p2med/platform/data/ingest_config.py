"""The ingest's settings, apart from the pipeline so that loading a config stays cheap."""

from __future__ import annotations

from pydantic import Field

from p2med.platform.config import Config
from p2med.platform.data.deid import DeidConfig
from p2med.platform.data.imaging import ImagingConfig
from p2med.platform.data.ingest_plan import SplitConfig


class IngestConfig(Config):
    """How a raw store becomes shards."""

    imaging: ImagingConfig = ImagingConfig()
    """Image normalisation (sizes, CT window, geometry checks)."""
    deid: DeidConfig = DeidConfig()
    """De-identification key."""
    split: SplitConfig = SplitConfig()
    """Patient-level train / val / bench split."""
    shard_target_mb: float = Field(64.0, gt=0)
    """Target size of one Parquet shard in MB (before compression)."""
    blocks_per_cpu: int = Field(4, ge=1)
    """Ray Data blocks per CPU for each pass: more blocks balance load, fewer cost less."""
