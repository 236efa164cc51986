"""Window-level classification scores, computed with river's metrics."""

from __future__ import annotations

from river import metrics

__all__ = ["scores"]


def scores(y_true: list[str], y_pred: list[str], classes: list[str] | None = None) -> dict:
    """Accuracy, macro F1, per-class recall and F1, and the confusion matrix of labelled windows.

    ``confusion[i][j]`` counts windows of true class ``labels[i]`` predicted as ``labels[j]``; recall
    and F1 are given for every class with at least one true window. ``macro_f1`` averages F1 over every
    class in the truth or the predictions (river's, and scikit-learn's default): a class predicted but
    never done counts 0, so it can lie far below the mean of ``f1`` (barbell-D: 57.66% against 96.1%,
    its 4 windows named a lift person D never did). Early stopping reads the same figure.
    """
    accuracy, macro_f1, confusion = metrics.Accuracy(), metrics.MacroF1(), metrics.ConfusionMatrix()
    for t, p in zip(y_true, y_pred, strict=True):
        accuracy.update(t, p)
        macro_f1.update(t, p)
        confusion.update(t, p)
    labels = sorted(set(y_true) | set(y_pred)) if classes is None else list(classes)
    labels += sorted((set(y_true) | set(y_pred)) - set(labels))
    matrix = [[int(confusion[t][p]) for p in labels] for t in labels]
    recall, f1 = {}, {}
    for i, c in enumerate(labels):
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        if support:
            recall[c] = round(matrix[i][i] / support, 4)
            f1[c] = round(2 * matrix[i][i] / (support + predicted), 4)
    return {
        "windows": len(y_true),
        "accuracy": round(accuracy.get(), 4) if y_true else None,
        "macro_f1": round(macro_f1.get(), 4) if y_true else None,
        "recall": recall,
        "f1": f1,
        "labels": labels,
        "confusion": matrix,
    }
