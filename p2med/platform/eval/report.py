"""The evaluation report: a fixed-width summary table for the console and one
self-contained HTML page (tables, bar charts, the model's diagnosis confusion matrix, an
example answer of each task).

Both read the metrics dict the eval job writes to metrics.json:
`{"model": uri, "variant": {"preset", "alignment"}, "split" (None for a benchmark file),
"benchmark": {"samples", "tasks", "diagnoses"[, "file", "left_out"]}, "controls": {name:
control}}`,
where a control is `{"overall": metrics, "tasks": {task: metrics}, "confusion": {...}}` and
a metric of None does not apply to that task. The controls (text only, shuffled images,
majority class) sit next to the model so a reader sees how much the images matter.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from p2med.platform.data.language import text_language
from p2med.platform.data.tasks import TASKS
from p2med.platform.eval.settings import MAJORITY, MODEL, SHUFFLED, TEXT_ONLY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NA = "n/a"
# (metrics key, console header, HTML header)
SCORES = (
    ("rouge_l", "ROUGE-L", "ROUGE-L"),
    ("bleu4", "BLEU-4", "BLEU-4"),
    ("findings_f1", "find F1", "Findings F1"),
    ("diagnosis_accuracy", "dx acc", "Diagnosis accuracy"),
    ("diagnosis_macro_f1", "dx mF1", "Diagnosis macro-F1"),
    ("treatment_agreement", "treat agr", "Treatment agreement"),
)
# Metrics compared across controls in the console and charted per task in the HTML page.
COMPARED = ("findings_f1", "diagnosis_accuracy")
CHARTED = ("findings_f1", "diagnosis_accuracy", "rouge_l")
CONTROL_LABELS = {  # name -> (short label, what it is)
    MODEL: ("model", "the model under evaluation"),
    TEXT_ONLY: ("text-only", "images removed from the prompts"),
    SHUFFLED: ("shuffled", "images swapped between patients"),
    MAJORITY: ("majority", "majority-class baseline, no model"),
}
TASK_WIDTH = max(len(task) for task in TASKS)
CELL = 10


def summary_table(metrics: Mapping[str, Any]) -> str:
    """The model's scores per task and overall, then findings F1 and diagnosis accuracy of
    every control next to the model's, as fixed-width text (under 110 columns)."""
    model = metrics["controls"]["model"]
    header = [key for _, key, _ in SCORES] + ["samples", "failed"]
    lines = [
        f"model {metrics['model']}{_variant(metrics)}, {metrics['benchmark']['samples']} benchmark "
        f"samples {_source(metrics)}",
        "",
        _line("task", header),
    ]
    for row, scores in _rows(model):
        counts = [str(scores["samples"]), str(scores["failed"])]
        lines.append(_line(row, [_score(scores.get(key)) for key, _, _ in SCORES] + counts))
    if len(metrics["controls"]) > 1:
        lines += ["", *_control_comparison(metrics["controls"])]
    return "\n".join(lines)


def html_report(metrics: Mapping[str, Any], samples: Sequence[Mapping[str, Any]] = ()) -> str:
    """One self-contained HTML page: charts are embedded PNGs, the CSS is inline, and every
    text from the metrics and `samples` (lines of samples.jsonl; the model's first answer of
    each task is shown) is escaped. The same inputs give the same page byte for byte."""
    controls = metrics["controls"]
    parts = [_header(metrics), "<h2>Scores per task</h2>"]
    for name, control in controls.items():
        parts.append(f"<h3>{html.escape(_label(name))}</h3>")
        parts.append(_scores_table(control))
    parts.append("<h2>Charts</h2>")
    for key in CHARTED:
        chart = _bar_chart(controls, key)
        if chart is not None:
            parts.append(_img(chart, f"{_title(key)} per task and control"))
    confusion = controls["model"].get("confusion")
    if confusion is not None:
        parts.append("<h2>Diagnosis confusion matrix (model)</h2>")
        parts.append(_img(_heatmap(confusion), "diagnosis confusion matrix of the model"))
        parts.append(_confusion_table(confusion))
    parts += _examples(samples)
    return _PAGE.format(body="\n".join(parts))


def _rows(control: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The control's tasks in TASKS order (unknown ones after), then the overall row."""
    tasks = _in_task_order(control["tasks"])
    return [(task, control["tasks"][task]) for task in tasks] + [("overall", control["overall"])]


def _in_task_order(tasks: Iterable[str]) -> list[str]:
    order = {task: index for index, task in enumerate(TASKS)}
    return sorted(tasks, key=lambda task: (order.get(task, len(order)), task))


def _score(value: float | None) -> str:
    return NA if value is None else f"{value:.3f}"


def _line(first: str, cells: list[str]) -> str:
    return first.ljust(TASK_WIDTH) + "".join(cell.rjust(CELL) for cell in cells)


def _control_comparison(controls: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Rows of the model's tasks; per compared metric, one column per control."""
    gap = "   "
    block = CELL * len(controls)
    titles = gap.join(_title(key).center(block) for key in COMPARED)
    labels = gap.join("".join(_label(name).rjust(CELL) for name in controls) for _ in COMPARED)
    legend = [f"  {_label(name)}: {CONTROL_LABELS[name][1]}" for name in controls if name in CONTROL_LABELS]
    lines = [
        "controls (how much the images matter):",
        *legend,
        "",
        " " * TASK_WIDTH + titles.rstrip(),
        "task".ljust(TASK_WIDTH) + labels,
    ]
    for row, _ in _rows(controls["model"]):
        cells = (
            "".join(_score(_metric(control, row, key)).rjust(CELL) for control in controls.values())
            for key in COMPARED
        )
        lines.append(row.ljust(TASK_WIDTH) + gap.join(cells))
    return lines


def _metric(control: Mapping[str, Any], row: str, key: str) -> float | None:
    """A control's score for a task or "overall"; None where the control lacks the task."""
    scores = control["overall"] if row == "overall" else control["tasks"].get(row, {})
    return scores.get(key)


def _variant(metrics: Mapping[str, Any]) -> str:
    """Which kind of model it is, e.g. " (tiny, alignment slots)"."""
    return f" ({metrics['variant']['preset']}, alignment {metrics['variant']['alignment']})"


def _source(metrics: Mapping[str, Any]) -> str:
    """Where the benchmark came from: "of the dev split", or "from <file>" (lines left out)."""
    benchmark = metrics["benchmark"]
    if metrics["split"] is not None:
        return f"of the {metrics['split']} split"
    return f"from {benchmark['file']} ({benchmark['left_out']} lines left out)"


def _label(control: str) -> str:
    return CONTROL_LABELS.get(control, (control, ""))[0]


def _title(key: str) -> str:
    return next(title for score, _, title in SCORES if score == key)


def _header(metrics: Mapping[str, Any]) -> str:
    benchmark = metrics["benchmark"]
    legend = "".join(
        f"<li><b>{html.escape(_label(name))}</b>: {html.escape(CONTROL_LABELS[name][1])}</li>"
        for name in metrics["controls"]
        if name in CONTROL_LABELS
    )
    return (
        "<h1>Evaluation report</h1>"
        f"<p>Model: <code>{html.escape(str(metrics['model']))}</code>{html.escape(_variant(metrics))}<br>"
        f"Benchmark: {int(benchmark['samples'])} samples {html.escape(_source(metrics))}</p>"
        f'<div class="counts">{_counts_table("Task", benchmark.get("tasks", {}))}'
        f"{_counts_table('Diagnosis', benchmark.get('diagnoses', {}))}</div>"
        f"<ul>{legend}</ul>"
    )


def _counts_table(title: str, counts: Mapping[str, int]) -> str:
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{int(n)}</td></tr>" for name, n in counts.items())
    return f"<table><tr><th>{html.escape(title)}</th><th>Samples</th></tr>{rows}</table>"


def _scores_table(control: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, _, title in SCORES)
    body = []
    for row, scores in _rows(control):
        cells = "".join(f"<td>{_score(scores.get(key))}</td>" for key, _, _ in SCORES)
        counts = f"<td>{int(scores['samples'])}</td><td>{int(scores['failed'])}</td>"
        body.append(f"<tr><td>{html.escape(row)}</td>{cells}{counts}</tr>")
    return f"<table><tr><th>Task</th>{head}<th>Samples</th><th>Failed</th></tr>{''.join(body)}</table>"


def _confusion_table(confusion: Mapping[str, Any]) -> str:
    predicted, reference = _confusion_labels(confusion)
    head = "".join(f"<th>{html.escape(label)}</th>" for label in predicted)
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>{''.join(f'<td>{int(n)}</td>' for n in counts)}</tr>"
        for label, counts in zip(reference, confusion["matrix"], strict=True)
    )
    return f"<table><tr><th>reference \\ predicted</th>{head}</tr>{body}</table>"


def _confusion_labels(confusion: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Column labels (predicted, with "none" = no diagnosis stated) and row labels."""
    predicted = list(confusion["labels"])
    return predicted, [label for label in predicted if label != "none"]


def _examples(samples: Sequence[Mapping[str, Any]]) -> list[str]:
    """The model's first answer of each task: its prompt, the reference and the answer, each
    marked with its own language so that a browser picks its glyphs (Chinese or Japanese
    forms of the same characters)."""
    first: dict[str, Mapping[str, Any]] = {}
    for sample in samples:
        if sample["control"] == MODEL:
            first.setdefault(sample["task"], sample)
    if not first:
        return []
    parts = ["<h2>Examples (model)</h2>"]
    for task in _in_task_order(first):
        sample = first[task]
        answer = sample["prediction"] if sample["failed"] is None else f"(failed: {sample['failed']})"
        rows = (("Prompt", sample["prompt"]), ("Reference", sample["reference"]), ("Answer", answer))
        cells = "".join(f"<tr><th>{name}</th>{_text_cell(text)}</tr>" for name, text in rows)
        parts.append(f'<h3>{html.escape(task)}</h3><table class="example">{cells}</table>')
    return parts


def _text_cell(text: str) -> str:
    return f'<td lang="{text_language(text)}">{html.escape(text)}</td>'


def _img(data_uri: str, alt: str) -> str:
    return f'<img src="{data_uri}" alt="{html.escape(alt)}">'


def _figure(width: float, height: float) -> Figure:
    # A bare Figure, not pyplot: it never enters pyplot's registry, so nothing stays open
    # and the process's backend is left alone; Agg renders it on savefig.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    # Without the Software entry the PNG holds nothing that varies between runs or versions.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar_chart(controls: Mapping[str, Mapping[str, Any]], key: str) -> str | None:
    """Grouped bars of one metric: groups are the model's rows that have it, bars are the
    controls. None when no row has the metric."""
    rows = [
        row
        for row, _ in _rows(controls["model"])
        if any(_metric(c, row, key) is not None for c in controls.values())
    ]
    if not rows:
        return None
    fig = _figure(max(6.0, 1.3 * len(rows) + 2), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(controls)
    for index, (name, control) in enumerate(controls.items()):
        offset = (index - (len(controls) - 1) / 2) * width
        values = [_metric(control, row, key) for row in rows]
        ax.bar(
            [position + offset for position in range(len(rows))],
            [float("nan") if value is None else value for value in values],
            width,
            label=_label(name),
            color=f"C{index}",
        )
    ax.set_xticks(range(len(rows)), [row.replace("_", "\n") for row in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(_title(key))
    ax.set_title(f"{_title(key)} per task")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return _png(fig)


def _heatmap(confusion: Mapping[str, Any]) -> str:
    """Counts annotated; colours are row fractions so rare diagnoses read as clearly as
    common ones."""
    predicted, reference = _confusion_labels(confusion)
    matrix = confusion["matrix"]
    fractions = [[n / max(sum(counts), 1) for n in counts] for counts in matrix]
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for i, counts in enumerate(matrix):
        for j, n in enumerate(counts):
            ax.text(
                j, i, str(n), ha="center", va="center", color="white" if fractions[i][j] > 0.5 else "black"
            )
    ax.set_xticks(range(len(predicted)), [label.replace("_", "\n") for label in predicted], fontsize=8)
    ax.set_yticks(range(len(reference)), reference, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    fig.colorbar(image, ax=ax, label="fraction of reference row")
    return _png(fig)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>p2med evaluation report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 1em 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.counts {{ display: flex; align-items: flex-start; }}
img {{ display: block; max-width: 100%; margin: 0.5em 0 1.5em; }}
table.example td {{ text-align: left; white-space: pre-wrap; max-width: 60em; }}
table.example th {{ vertical-align: top; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
