"""Wan et al.'s criteria against scikit-learn and a hand-worked confusion matrix."""
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score

from engine.metrics import classification_metrics


def test_binary_hand_worked():
    # TP=3, FN=1, TN=4, FP=2 for positive class 1.
    y_true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    m = classification_metrics(y_true, y_pred, n_classes=2, positive=1)
    assert m["acc"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["ppv"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 300)
    proba = rng.dirichlet(np.ones(3), 300)
    proba[np.arange(300), y_true] += 0.4
    proba /= proba.sum(1, keepdims=True)
    y_pred = proba.argmax(1)
    m = classification_metrics(y_true, y_pred, 3, positive=2, proba=proba)
    assert m["sensitivity"] == pytest.approx(recall_score(y_true == 2, y_pred == 2))
    assert m["ppv"] == pytest.approx(precision_score(y_true == 2, y_pred == 2))
    assert m["specificity"] == pytest.approx(recall_score(y_true != 2, y_pred != 2))
    assert m["npv"] == pytest.approx(precision_score(y_true != 2, y_pred != 2))
    assert m["macro_sensitivity"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert m["macro_ppv"] == pytest.approx(precision_score(y_true, y_pred, average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y_true == 2, proba[:, 2]))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y_true, proba, multi_class="ovr"))
    cm = confusion_matrix(y_true, y_pred)
    assert m["acc"] == pytest.approx(np.trace(cm) / cm.sum())


def test_undefined_ratio_is_nan_not_zero():
    m = classification_metrics([0, 0, 0], [0, 0, 0], n_classes=2, positive=1)
    assert np.isnan(m["sensitivity"]) and np.isnan(m["ppv"])
    assert m["specificity"] == 1.0
