"""The training batch's columns: the contract between the data that feeds a model and the model.

A batch is a dict of arrays (L: the padded text length; S, D, H, W: the image sizes;
K: the finding labels):

    input_ids, attention_mask   (B, L) int64    right-padded
    labels                      (B, L) int64    = input_ids on target tokens, elsewhere
                                                `interleave.IGNORE_INDEX` (the model shifts them)
    xray (B, S, S), ct (B, D, H, W) float32     in [0, 1]; zeros where the sample shows none
    has_xray, has_ct            (B,) int64      whether the sample shows that image
    xray_findings, ct_findings  (B, K) float32  the image's finding labels (multi-hot); NaN
                                                where the sample shows no such image or it is
                                                unlabelled
    task                        (B,) int64      the sample's task, an index into the task list

A text-only batch holds the first three. The names live in the model, which `Images.from_batch`
parses them with, so that the platform (which may import the model) builds them from here.
"""

from __future__ import annotations

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LABELS = "labels"
TOKEN_COLUMNS = (INPUT_IDS, ATTENTION_MASK, LABELS)  # (B, L) each
TASK = "task"


def shown_column(kind: str) -> str:
    """The (B,) column that says which samples show an image of `kind` ("xray" / "ct");
    the pixels are in the column named `kind` itself."""
    return f"has_{kind}"


def findings_column(kind: str) -> str:
    """The (B, K) finding labels of the samples' `kind` images."""
    return f"{kind}_findings"
