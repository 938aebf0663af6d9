"""Generate a synthetic P2Med-MD raw store (DICOM X-rays and CTs, reports, records).

p2med synth --out data/raw patients=200 seed=0
p2med synth --config synth/small.yaml out=s3://bucket/raw storage.endpoint_url=http://127.0.0.1:9000
"""

from __future__ import annotations

from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.storage import StorageSettings, resolve


class JobSettings(SynthSettings):
    out: str = "data/raw"
    """Where to write the raw store: a local path, file:// or s3:// URI."""
    storage: StorageSettings = StorageSettings()
    """Connection settings for s3:// locations."""


def run(config: JobSettings) -> None:
    out = resolve(config.out, config.storage)
    print(f"synth: generating {config.patients} patients (seed {config.seed}) into {out.uri}")
    s = generate(SynthSettings.model_validate(config.model_dump(exclude={"out", "storage"})), out)
    diagnoses = ", ".join(f"{k} {v}" for k, v in s.diagnoses.items())
    print(
        f"synth: wrote {s.patients} patients in {s.seconds:.1f} s ({s.patients_per_second:.1f} patients/s, "
        f"{s.bytes / 1e6:.1f} MB): {s.xray_studies} X-rays, {s.ct_series} CT series ({s.ct_slices} slices), "
        f"{s.reports} reports, {s.outpatient_records} outpatient and {s.inpatient_records} inpatient records"
    )
    print(f"synth: diagnoses: {diagnoses}")
    print(f"synth: data set ready at {s.out} (manifest: {out.join('manifest.json').uri})")
