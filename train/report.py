"""Final-report metrics: scikit-learn's per-class report and the confusion matrix."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

__all__ = ["classification_summary", "confusion_text"]


def classification_summary(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]
                           ) -> tuple[str, dict, np.ndarray]:
    """(report as text, report as a dict, confusion matrix with true classes as rows)."""
    labels = list(range(len(classes)))
    kwargs = dict(labels=labels, target_names=list(classes), digits=4, zero_division=0)
    text = classification_report(y_true, y_pred, **kwargs)
    as_dict = classification_report(y_true, y_pred, output_dict=True, **kwargs)
    return text, as_dict, confusion_matrix(y_true, y_pred, labels=labels)


def confusion_text(cm: np.ndarray, classes: tuple[str, ...]) -> str:
    """The confusion matrix as a fixed-width table: rows are true classes, columns predictions."""
    names = [c[:8] for c in classes]
    w = max(6, *(len(n) for n in names), len(str(cm.max())))
    head = " " * w + " " + " ".join(n.rjust(w) for n in names)
    rows = [n.rjust(w) + " " + " ".join(str(v).rjust(w) for v in row) for n, row in zip(names, cm)]
    return "\n".join([head, *rows])
