"""The evaluation report: console summary table and self-contained HTML page."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from typing import Any

from p2med.platform.data.tasks import TASKS
from p2med.platform.eval.report import html_report, summary_table
from p2med.platform.eval.scores import TASK_SCORES

URI = "s3://bucket/runs/<r1>/stage3/model"
LABELS = ["normal", "bacterial_pneumonia", "viral_pneumonia", "mycoplasma_pneumonia", "bronchiolitis", "none"]


def scores(base: float, task: str, samples: int = 100, failed: int = 0) -> dict[str, Any]:
    """Scores of one task (or "overall"): the clinical ones where the scorer gives them
    (`TASK_SCORES`), None elsewhere; the treatment task goes without text overlap too, so
    that every column of the table shows its placeholder."""
    given = TASK_SCORES.get(task, frozenset({"findings", "diagnosis", "treatment"}))
    text = task != "treatment_recommendation"
    return {
        "samples": samples,
        "failed": failed,
        "rouge_l": base if text else None,
        "bleu4": base / 2 if text else None,
        "findings_f1": base + 0.1 if "findings" in given else None,
        "diagnosis_accuracy": base + 0.2 if "diagnosis" in given else None,
        "diagnosis_macro_f1": base + 0.15 if "diagnosis" in given else None,
        "treatment_agreement": base + 0.05 if "treatment" in given else None,
    }


def control(base: float) -> dict[str, Any]:
    matrix = [[10 * (i == j) + j for j in range(6)] for i in range(5)]
    return {
        "overall": scores(base, "overall", samples=600, failed=3),
        "tasks": {task: scores(base, task, failed=3 if task == "ct_report" else 0) for task in TASKS},
        "confusion": {"labels": LABELS, "matrix": matrix},
    }


def metrics(*controls: str) -> dict[str, Any]:
    bases = {"model": 0.5, "text_only": 0.3, "shuffled_images": 0.25, "majority": 0.1}
    return {
        "model": URI,
        "variant": {"preset": "tiny", "alignment": "head"},
        "split": "test",
        "benchmark": {
            "samples": 600,
            "tasks": {task: 100 for task in TASKS},
            "diagnoses": {label: 120 for label in LABELS[:-1]},
        },
        "controls": {name: control(bases[name]) for name in controls},
    }


ALL = metrics("model", "text_only", "shuffled_images", "majority")


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def row(table: str, first: str) -> list[str]:
    """The cells of the first line that starts with `first`."""
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [first])


def test_summary_table_rows_scores_and_placeholders() -> None:
    table = summary_table(ALL)
    print(table)
    assert max(len(line) for line in table.splitlines()) <= 110
    assert f"model {URI} (tiny, alignment head), 600 benchmark samples of the test split" in table
    header = next(line for line in table.splitlines() if line.startswith("task"))
    for title in ("ROUGE-L", "BLEU-4", "find F1", "dx acc", "dx mF1", "treat agr", "samples", "failed"):
        assert f" {title}" in header
    for task in TASKS:
        assert task in table
    assert row(table, "xray_report") == [
        "xray_report",
        "0.500",
        "0.250",
        "0.600",
        "n/a",
        "n/a",
        "n/a",
        "100",
        "0",
    ]
    assert row(table, "ct_report")[-1] == "3"
    assert row(table, "treatment_recommendation")[1:7] == ["n/a"] * 5 + ["0.550"]
    assert row(table, "overall") == [
        "overall",
        "0.500",
        "0.250",
        "0.600",
        "0.700",
        "0.650",
        "0.550",
        "600",
        "3",
    ]


def test_summary_table_compares_controls() -> None:
    table = summary_table(ALL)
    comparison = table[table.index("controls") :]
    assert "Findings F1" in comparison and "Diagnosis accuracy" in comparison
    assert row(comparison, "task") == ["task"] + ["model", "text-only", "shuffled", "majority"] * 2
    # Findings F1 of model, text-only, shuffled, majority; then their diagnosis accuracy.
    assert row(comparison, "xray_report")[1:] == ["0.600", "0.400", "0.350", "0.200"] + ["n/a"] * 4
    assert row(comparison, "overall")[1:] == [
        "0.600",
        "0.400",
        "0.350",
        "0.200",
        "0.700",
        "0.500",
        "0.450",
        "0.300",
    ]


def test_summary_table_model_only() -> None:
    table = summary_table(metrics("model"))
    assert "controls" not in table
    assert row(table, "overall")[1] == "0.500"


def test_html_report_is_self_contained_and_escaped() -> None:
    from matplotlib import pyplot as plt

    page = html_report(ALL)
    parsed = Tags(page)
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 4  # findings F1, diagnosis accuracy, ROUGE-L, confusion heatmap
    assert all(src.startswith("data:image/png;base64,") for src in images)
    png = base64.b64decode(images[0].removeprefix("data:image/png;base64,"), validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)
    assert not any(tag in ("link", "script") for tag, _ in parsed.tags)
    assert "s3://bucket/runs/&lt;r1&gt;/stage3/model</code> (tiny, alignment head)" in page
    assert URI not in page
    text = "".join(parsed.text)
    for task in TASKS:
        assert task in text
    for name in ("text-only", "shuffled", "majority", "Failed", "reference \\ predicted"):
        assert name in text
    assert plt.get_fignums() == []


def test_html_report_is_deterministic() -> None:
    assert html_report(ALL) == html_report(ALL)


def test_html_report_model_only() -> None:
    page = html_report(metrics("model"))
    parsed = Tags(page)
    assert sum(tag == "img" for tag, _ in parsed.tags) == 4
    assert "text-only" not in page


def sample(task: str, control: str, prediction: str, failed: str | None = None) -> dict[str, Any]:
    return {
        "id": f"{task}-1",
        "task": task,
        "control": control,
        "prompt": "<image>\n请为这张胸部X线片书写影像报告（影像所见及印象）。",
        "reference": "影像所见：右肺下叶实变影。",
        "prediction": prediction,
        "failed": failed,
    }


def test_html_report_shows_an_example_of_each_task_in_its_own_language() -> None:
    samples = [
        sample("xray_report", "text_only", "text-only answer"),
        sample("xray_report", "model", "影像所见：右肺下叶实变影。<script>alert(1)</script>"),
        sample("xray_report", "model", "a second answer of the task"),
        sample("ct_report", "model", "", failed="timeout"),
    ]
    page = html_report(metrics("model"), samples)
    examples = page[page.index("Examples (model)") :]
    assert examples.index("ct_report") > examples.index("xray_report")  # in TASKS order
    assert '<td lang="zh">影像所见：右肺下叶实变影。&lt;script&gt;' in examples
    assert '<td lang="en">(failed: timeout)</td>' in examples
    assert "<image>" not in examples and "&lt;image&gt;" in examples
    assert "text-only answer" not in page and "a second answer" not in page
    assert "Examples" not in html_report(metrics("model"))
