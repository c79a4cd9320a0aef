"""Paper-style tables and the metrics JSON."""

import json

import pytest

from deemo_jax.eval.metrics import classification_metrics
from deemo_jax.eval.report import (
    Table5Row,
    metrics_markdown,
    table4_markdown,
    table5_markdown,
    write_metrics_json,
)

LABELS = ("positive", "negative")
METRICS = classification_metrics(
    ["positive"] * 6 + ["negative"] * 2,
    ["positive"] * 4 + ["negative", None, "negative", "positive"],
    LABELS,
)


def test_table4_marks_modalities_and_prints_percentages():
    table = table4_markdown([(("transcription", "video", "audio"), METRICS)])
    lines = table.splitlines()
    assert lines[0].startswith(
        "| Source | Audio transcription | De-identified video | De-identified audio | NFBL |"
    )
    assert lines[2] == "| ours | ✓ | ✓ | ✓ | - | 62.50 | 67.05 |"  # accuracy 5/8, weighted F1 0.670
    assert "| paper | ✓ | ✓ | ✓ | - | 74.49 | 74.45 |" in lines
    assert len(lines) == 2 + 1 + 7
    macro = table4_markdown([(("nfbl",), METRICS)], f1="macro", include_paper=False).splitlines()
    assert macro[2] == "| ours | - | - | - | ✓ | 62.50 | 61.36 |" and len(macro) == 3
    with pytest.raises(ValueError, match="subset of"):
        table4_markdown([(("face",), METRICS)])


def test_table5_rows_average_and_paper_reference():
    summary = {"metrics": {"clue_overlap": {"mean": 5.0}, "label_overlap": {"mean": 7.0}}}
    row = Table5Row.from_results("ours", METRICS, summary)
    assert row.avg == pytest.approx(6.0) and row.accuracy == pytest.approx(62.5)
    lines = table5_markdown([row, Table5Row("recognition only", accuracy=70.0, f1=69.0)]).splitlines()
    assert lines[2] == "| ours | V+A+T | Vicuna | 7B | 62.50 | 67.05 | 5.00 | 7.00 | 6.00 |"
    assert lines[3].endswith("| 70.00 | 69.00 | - | - | - |")
    assert lines[4] == "| DEEMO-LLaMA (paper) | V+A+T | Vicuna | 7B | 74.49 | 74.45 | 6.20 | 7.66 | 6.93 |"


def test_metrics_json_and_markdown(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_metrics_json(METRICS, path, extra={"checkpoint": "step_100"})
    data = json.loads(path.read_text())
    assert data["checkpoint"] == "step_100" and data["n_unparseable"] == 1
    assert data["weighted_f1"] == pytest.approx(METRICS.weighted_f1)
    with pytest.raises(ValueError, match="overwrite"):
        write_metrics_json(METRICS, path, extra={"accuracy": 1.0})
    md = metrics_markdown(METRICS)
    assert "| positive | 4 | 1 | 1 |" in md and "| 8 | 62.50 | 67.05 | 61.36 | 58.33 | 1 (12.50%) |" in md
