"""A run directory: one folder (local or s3://) that holds everything a multi-phase run
wrote, the settings it ran with, and a ledger of its finished phases, so that an
interrupted run continues where it stopped.

    run = RunDirectory.create(resolve("runs"))          # runs/20261128-201503/
    if not run.finished("ingest"):
        ...; run.finish("ingest", seconds)
    run = RunDirectory.open(resolve("runs/20261128-201503"))   # later: resume
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import yaml

from p2med.platform.errors import P2MedError
from p2med.platform.storage import Location, check_writable

LEDGER = "phases.json"
SETTINGS = "settings.yaml"


@dataclass
class RunDirectory:
    location: Location

    @classmethod
    def create(cls, root: Location) -> RunDirectory:
        """A new, empty run directory under `root`, named by the local date and time
        (a suffix when that name is taken)."""
        check_writable(root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, n = stamp, 1
        while root.join(name).exists():
            n += 1
            name = f"{stamp}-{n}"
        run = cls(root.join(name))
        run._write_ledger({})
        return run

    @classmethod
    def open(cls, location: Location) -> RunDirectory:
        """An existing run directory.

        Raises:
            P2MedError: `location` is not a run directory (no ledger).
        """
        run = cls(location)
        if not location.join(LEDGER).exists():
            raise P2MedError(f"{location.uri} is not a run directory: it has no {LEDGER}")
        return run

    @property
    def uri(self) -> str:
        return self.location.uri

    def join(self, *parts: str) -> Location:
        return self.location.join(*parts)

    def phases(self) -> dict[str, dict[str, Any]]:
        """Finished phases in order: name -> {"seconds": wall time, ...details}."""
        return json.loads(self.location.join(LEDGER).read_text())

    def finished(self, phase: str) -> bool:
        return phase in self.phases()

    def finish(self, phase: str, seconds: float, **details: Any) -> None:
        """Record `phase` as finished, written after its outputs are complete."""
        self._write_ledger(self.phases() | {phase: {"seconds": round(seconds, 1), **details}})

    def save_settings(self, settings: dict[str, Any]) -> None:
        self.location.join(SETTINGS).write_text(yaml.safe_dump(settings, sort_keys=False))

    def saved_settings(self) -> dict[str, Any]:
        """The settings `save_settings` stored.

        Raises:
            P2MedError: the run holds none.
        """
        path = self.location.join(SETTINGS)
        if not path.exists():
            raise P2MedError(f"{self.uri} holds no {SETTINGS}: its run never started")
        return yaml.safe_load(path.read_text()) or {}

    def _write_ledger(self, phases: dict[str, Any]) -> None:
        self.location.join(LEDGER).write_text(json.dumps(phases, indent=2) + "\n")
