"""A benchmark from a JSONL file: a hospital's own test set (the real P2Med-MBench, say),
scored as the built-in benchmark is (`p2med eval benchmark.file=URI`).

One JSON object a line (UTF-8):

    {"id": "case-0017/xray_report",                 optional; "line-<n>" without it
     "task": "xray_report",                          one of `tasks.TASKS`
     "prompt": "Write the radiology report ...\\nFever for 3 days.",
     "images": ["0017/cxr.dcm", ["0017/ct/1.dcm", "0017/ct/2.dcm"]],
     "reference": "Findings: ...\\nImpression: ...",
     "diagnosis": "mycoplasma_pneumonia"}            optional vocabulary label (the report's counts)

`prompt` is what the model reads after its images: the task's instruction and the case's
text, as the training prompts lay them out (`prompts.request_prompt`). An image is one file
(an X-ray: DICOM, PNG or JPEG) or a CT series (a list of DICOM files, or one zip); a path
is relative to the benchmark file's folder, or a URI (s3://, file://). A sample shows at
most one X-ray and one CT; the model reads the X-ray first, as it was trained.

A line that cannot be used (not JSON, a field missing or of the wrong kind, an image that
cannot be read) is left out with its line number and the reason, never its text; the
rest are scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.platform.data.image_files import BadImage, decode_image_files
from p2med.platform.data.imaging import ImagingSettings
from p2med.platform.data.shards import encode_pixels
from p2med.platform.data.tasks import TASKS
from p2med.platform.data.vocabulary import DIAGNOSES
from p2med.platform.errors import P2MedError, StorageError
from p2med.platform.eval.benchmark import UNKNOWN, Benchmark, BenchSample
from p2med.platform.storage import Location, resolve


class BenchmarkLine(BaseModel):
    """One line of a benchmark file."""

    model_config = ConfigDict(extra="forbid")

    task: str
    prompt: str
    images: list[str | list[str]] = []
    reference: str
    id: str | None = None
    diagnosis: str | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"must be one of {', '.join(TASKS)}")
        return task

    @field_validator("diagnosis")
    @classmethod
    def _known_diagnosis(cls, diagnosis: str | None) -> str | None:
        if diagnosis is not None and diagnosis not in DIAGNOSES:
            raise ValueError(f"must be one of {', '.join(DIAGNOSES)}")
        return diagnosis


@dataclass(frozen=True)
class Skipped:
    line: int
    reason: str


def read_benchmark_file(
    file: Location, imaging: ImagingSettings, max_image_bytes: int
) -> tuple[Benchmark, list[Skipped]]:
    """The benchmark the file at `file` holds, its images decoded as the model's training
    images were (`imaging`), and the lines left out.

    Raises:
        P2MedError: the file cannot be read, or no line of it can be used.
    """
    try:
        text = file.read_text()
    except (StorageError, UnicodeDecodeError) as exc:
        raise P2MedError(f"cannot read the benchmark file {file.uri}: {exc}") from None
    folder = resolve(file.uri.rsplit("/", 1)[0], file.storage)
    samples, skipped = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            samples.append(_sample(number, raw, folder, imaging, max_image_bytes))
        except _Unusable as exc:
            skipped.append(Skipped(number, str(exc)))
    if not samples:
        reasons = "; ".join(f"line {s.line}: {s.reason}" for s in skipped[:3])
        raise P2MedError(f"the benchmark file {file.uri} holds no usable sample ({reasons or 'it is empty'})")
    shapes = {"xray": (imaging.xray_size,) * 2, "ct": (imaging.ct_slices, imaging.ct_size, imaging.ct_size)}
    return Benchmark(samples, shapes), skipped


class _Unusable(ValueError):
    """A line left out; the message says why without quoting it."""


def _sample(
    number: int, raw: str, folder: Location, imaging: ImagingSettings, max_image_bytes: int
) -> BenchSample:
    try:
        line = BenchmarkLine.model_validate(json.loads(raw))
    except json.JSONDecodeError:
        raise _Unusable("not a JSON object") from None
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors()]
        raise _Unusable("; ".join(problems)) from None
    if IMAGE_TOKEN in line.prompt:
        raise _Unusable(f"prompt: holds {IMAGE_TOKEN}; the images are placed before it")
    pixels: dict[str, bytes] = {}
    for index, image in enumerate(line.images):
        paths = [image] if isinstance(image, str) else image
        try:
            files = [_located(path, folder).read_bytes() for path in paths]
            kind, decoded = decode_image_files(files, imaging, max_image_bytes)
        except P2MedError as exc:  # a storage error names the path: only its kind is told
            raise _Unusable(f"image {index + 1}: cannot be read ({type(exc).__name__})") from None
        except BadImage as exc:
            raise _Unusable(f"image {index + 1}: {exc}") from None
        if kind in pixels:
            raise _Unusable(f"more than one {kind.upper()}: a sample shows at most one X-ray and one CT")
        pixels[kind] = encode_pixels(decoded)
    kinds = tuple(kind for kind in ("xray", "ct") if kind in pixels)  # the X-ray first, as in training
    return BenchSample(
        id=line.id or f"line-{number}",
        task=line.task,
        diagnosis=line.diagnosis or UNKNOWN,
        prompt=f"{IMAGE_TOKEN}\n" * len(kinds) + line.prompt,
        reference=line.reference,
        images=kinds,
        xray=pixels.get("xray"),
        ct=pixels.get("ct"),
    )


def _located(path: str, folder: Location) -> Location:
    """A path of the file: a URI or absolute path as it is, else relative to its folder."""
    if "://" in path or path.startswith("/"):
        return resolve(path, folder.storage)
    return folder.join(path)
