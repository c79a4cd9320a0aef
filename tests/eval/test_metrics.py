"""Recognition metrics: hand-computed values, the unparseable policy, sklearn as an oracle, the PNG."""

import numpy as np
import pytest

from deemo_jax.eval.metrics import (
    UNPARSEABLE,
    classification_metrics,
    confusion_matrix,
    plot_confusion_matrix,
)

LABELS = ("positive", "negative")
P, N = LABELS
# Unbalanced: 6 positive, 2 negative; one answer unparseable (None).
GOLD = [P, P, P, P, P, P, N, N]
PRED = [P, P, P, P, N, None, N, P]


def test_hand_computed_unbalanced_example():
    m = classification_metrics(GOLD, PRED, LABELS)
    # Confusion (gold rows P, N; columns P, N, unparseable):
    #   P: 4 1 1   -> support 6
    #   N: 1 1 0   -> support 2
    np.testing.assert_array_equal(m.confusion, [[4, 1, 1], [1, 1, 0]])
    assert m.confusion_columns == (P, N, UNPARSEABLE)
    # positive: TP 4, predicted 5 -> P 4/5 = 0.8, R 4/6, F1 = 2*0.8*(2/3)/(0.8+2/3) = 8/11
    # negative: TP 1, predicted 2 -> P 1/2, R 1/2, F1 1/2
    assert m.per_class[P].precision == pytest.approx(0.8)
    assert m.per_class[P].recall == pytest.approx(0.6666666667)
    assert m.per_class[P].f1 == pytest.approx(0.7272727273)
    assert (m.per_class[P].support, m.per_class[P].predicted) == (6, 5)
    assert (m.per_class[N].precision, m.per_class[N].recall, m.per_class[N].f1) == pytest.approx(
        (0.5, 0.5, 0.5)
    )
    assert m.accuracy == pytest.approx(0.625)  # 5 of 8; the unparseable one is wrong
    assert m.macro_f1 == pytest.approx(0.6136363636)  # (8/11 + 1/2) / 2
    assert m.weighted_f1 == pytest.approx(0.6704545455)  # (6 * 8/11 + 2 * 1/2) / 8
    assert m.macro_f1 != pytest.approx(m.weighted_f1)
    assert m.uar == m.macro_recall == pytest.approx(0.5833333333)  # (4/6 + 1/2) / 2
    assert m.macro_precision == pytest.approx(0.65)  # (0.8 + 0.5) / 2
    assert m.weighted_precision == pytest.approx(0.725)  # (6 * 0.8 + 2 * 0.5) / 8
    assert m.weighted_recall == pytest.approx(m.accuracy)
    assert (m.n, m.n_unparseable, m.unparseable_rate) == (8, 1, 0.125)


def test_unparseable_lowers_recall_of_its_gold_class_only():
    with_none = classification_metrics(GOLD, PRED, LABELS)
    dropped = classification_metrics(GOLD[:5] + GOLD[6:], PRED[:5] + PRED[6:], LABELS)
    # Same precision as if the example were absent: it is no class's TP or FP ...
    assert with_none.per_class[P].precision == dropped.per_class[P].precision == pytest.approx(0.8)
    assert with_none.per_class[N].precision == dropped.per_class[N].precision
    # ... but it is a false negative of its gold class, and wrong for accuracy.
    assert dropped.per_class[P].recall == pytest.approx(0.8)
    assert with_none.per_class[P].recall == pytest.approx(4 / 6)
    assert with_none.per_class[N].recall == dropped.per_class[N].recall
    assert (dropped.accuracy, with_none.accuracy) == pytest.approx((5 / 7, 5 / 8))
    assert dropped.n_unparseable == 0
    # Mapping the unparseable answer to a class (the Emotion-LLaMA style fallback) would change precision.
    fallback = classification_metrics(GOLD, [p if p is not None else N for p in PRED], LABELS)
    assert fallback.per_class[N].precision == pytest.approx(1 / 3)


def test_agrees_with_sklearn_with_unparseable_as_an_extra_label():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = ("happy", "sad", "neutral", "angry")
    gold = list(rng.choice(labels, size=200, p=[0.5, 0.25, 0.15, 0.10]))
    pred = [None if rng.random() < 0.1 else str(x) for x in rng.choice(labels, size=200)]
    m = classification_metrics(gold, pred, labels)
    filled = [UNPARSEABLE if p is None else p for p in pred]
    kw = dict(labels=list(labels), zero_division=0)
    assert m.accuracy == pytest.approx(sklearn_metrics.accuracy_score(gold, filled))
    for average in ("macro", "weighted"):
        assert getattr(m, f"{average}_f1") == pytest.approx(
            sklearn_metrics.f1_score(gold, filled, average=average, **kw)
        )
        assert getattr(m, f"{average}_precision") == pytest.approx(
            sklearn_metrics.precision_score(gold, filled, average=average, **kw)
        )
        assert getattr(m, f"{average}_recall") == pytest.approx(
            sklearn_metrics.recall_score(gold, filled, average=average, **kw)
        )
    with pytest.warns(UserWarning, match="not in y_true"):  # the unparseable column has no gold
        assert m.uar == pytest.approx(sklearn_metrics.balanced_accuracy_score(gold, filled))
    cm = sklearn_metrics.confusion_matrix(gold, filled, labels=[*labels, UNPARSEABLE])
    np.testing.assert_array_equal(m.confusion, cm[: len(labels)])


def test_never_predicted_class_scores_zero_and_to_dict_is_jsonable():
    import json

    m = classification_metrics([P, N, N], [P, P, None], LABELS)
    assert (m.per_class[N].precision, m.per_class[N].recall, m.per_class[N].f1) == (0.0, 0.0, 0.0)
    d = json.loads(json.dumps(m.to_dict()))
    assert d["confusion"]["columns_predicted"] == [P, N, UNPARSEABLE]
    assert d["confusion"]["counts"] == [[1, 0, 0], [1, 0, 1]]
    assert d["n_unparseable"] == 1 and d["uar"] == d["macro_recall"]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"gold\[1\] = 'happy' is not in labels"):
        confusion_matrix([P, "happy"], [P, P], LABELS)
    with pytest.raises(ValueError, match=r"pred\[0\] = 'neutral'.*pass None"):
        confusion_matrix([P], ["neutral"], LABELS)
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([P], [P, P], LABELS)
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [], LABELS)


def test_confusion_matrix_png(tmp_path):
    m = classification_metrics(GOLD, PRED, LABELS)
    path = tmp_path / "cm.png"
    plot_confusion_matrix(m.confusion, LABELS, path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    with pytest.raises(ValueError, match=r"must be \[2, 2\] or \[2, 3\]"):
        plot_confusion_matrix(np.zeros((3, 3)), LABELS, tmp_path / "bad.png")
