"""Classification metrics shared by every protocol.

Two metrics are reported for every evaluation, and each downstream set names one of them as its
headline (``DownstreamSet.metric``):

- ``top1``: the fraction of examples whose predicted class is the true one.
- ``balanced_acc``: the mean over classes of per-class recall, taken over the classes present
  in ``y_true`` (a class with no true examples has no recall and is left out rather than
  counted as 0 or 1). This is the metric for sets whose classes are imbalanced.

The chance level of both is ``1 / num_classes``: a predictor that ignores its input and picks
a class uniformly at random scores that in expectation under either metric (for balanced
accuracy, whatever the class frequencies).
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("top1", "balanced_acc")


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-d, got shapes {y_true.shape} and {y_pred.shape}")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("cannot score an empty set of predictions")
    return y_true, y_pred


def top1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions equal to the true label."""
    y_true, y_pred = _check(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    y_true, y_pred = _check(y_true, y_pred)
    classes, inverse = np.unique(y_true, return_inverse=True)
    correct = np.bincount(inverse, weights=(y_true == y_pred).astype(np.float64), minlength=len(classes))
    support = np.bincount(inverse, minlength=len(classes))
    return float(np.mean(correct / support))


_FUNCS = {"top1": top1, "balanced_acc": balanced_accuracy}


def check_metric(metric_name: str) -> str:
    """Return ``metric_name`` if it is a known headline metric, else raise naming the valid ones."""
    if metric_name not in _FUNCS:
        raise ValueError(f"unknown metric {metric_name!r}; valid: {', '.join(METRIC_NAMES)}")
    return metric_name


def headline(metric_name: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The value of the named headline metric (``top1`` or ``balanced_acc``)."""
    return _FUNCS[check_metric(metric_name)](y_true, y_pred)


def all_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Both metrics, keyed by name."""
    return {name: fn(y_true, y_pred) for name, fn in _FUNCS.items()}


def example_weights(metric_name: str, y_true: np.ndarray) -> np.ndarray:
    """Per-example weights ``w`` (summing to 1) with ``metric = sum(w * correct)``: ``1/N`` for
    ``top1``; ``1 / (C * n_c)`` for ``balanced_acc`` (``C`` classes present, ``n_c`` examples of
    the example's class)."""
    y_true = np.asarray(y_true)
    if check_metric(metric_name) == "top1":
        return np.full(len(y_true), 1.0 / len(y_true))
    classes, inverse, support = np.unique(y_true, return_inverse=True, return_counts=True)
    return 1.0 / (len(classes) * support[inverse])


def paired_gain(metric_name: str, y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> tuple[float, float]:
    """``(gain, se)``: the headline metric of ``pred_b`` minus that of ``pred_a`` on the same
    examples, and its standard error from the per-example differences (the paired, McNemar-style
    estimate: examples both get right or both get wrong add nothing to it)."""
    y_true, pred_a = _check(y_true, pred_a)
    _, pred_b = _check(y_true, pred_b)
    w = example_weights(metric_name, y_true)
    d = (pred_b == y_true).astype(np.float64) - (pred_a == y_true).astype(np.float64)
    gain = float(np.sum(w * d))
    n = len(d)
    # the weighted sum's variance with the gain as the per-example mean (n / (n - 1): unbiased)
    var = float(np.sum(w**2 * (d - gain) ** 2)) * (n / (n - 1) if n > 1 else 0.0)
    return gain, float(np.sqrt(var))


def chance_level(metric_name: str, num_classes: int) -> float:
    """Expected score of uniform random guessing: ``1 / num_classes`` for both metrics."""
    check_metric(metric_name)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return 1.0 / int(num_classes)
