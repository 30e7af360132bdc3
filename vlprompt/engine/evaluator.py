"""Classification metrics with Dassl's printed format (the official parse_test_res.py reads it)."""
from collections import OrderedDict

import numpy as np
import torch


class ClassificationEvaluator:
    def __init__(self, lab2cname=None, per_class=False):
        self.lab2cname = lab2cname or {}
        self.per_class = per_class
        self.reset()

    def reset(self):
        self._pred, self._label = [], []

    def process(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self._pred.append(logits.argmax(dim=1).cpu())
        self._label.append(labels.cpu())

    def evaluate(self, verbose=True) -> OrderedDict:
        pred = torch.cat(self._pred).numpy() if self._pred else np.zeros(0, dtype=np.int64)
        label = torch.cat(self._label).numpy() if self._label else np.zeros(0, dtype=np.int64)
        total = int(label.size)
        correct = int((pred == label).sum())
        acc = 100.0 * correct / max(total, 1)
        classes = np.unique(label)
        results = OrderedDict(accuracy=acc, error=100.0 - acc, macro_f1=100.0 * _macro_f1(label, pred, classes))
        self.details = {"total": total, "correct": correct, "classes": [int(c) for c in classes]}
        if verbose:
            print("=> result")
            print(f"* total: {total:,}")
            print(f"* correct: {correct:,}")
            print(f"* accuracy: {acc:.1f}%")
            print(f"* error: {100.0 - acc:.1f}%")
            print(f"* macro_f1: {results['macro_f1']:.1f}%")
        if self.per_class:
            per_class = OrderedDict()
            if verbose:
                print("=> per-class result")
            for c in classes:
                mask = label == c
                pc_acc = 100.0 * float((pred[mask] == c).mean())
                name = self.lab2cname.get(int(c), str(c))
                per_class[name] = pc_acc
                if verbose:
                    print(f"* class: {int(c)} ({name})\ttotal: {int(mask.sum()):,}\t"
                          f"correct: {int((pred[mask] == c).sum()):,}\tacc: {pc_acc:.1f}%")
            mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
            if verbose:
                print(f"* average: {mean:.1f}%")
            results["perclass_accuracy"] = mean
            self.details["per_class_accuracy"] = per_class
        return results


def _macro_f1(label: np.ndarray, pred: np.ndarray, classes: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in the labels (sklearn's average='macro', labels=classes)."""
    if classes.size == 0:
        return 0.0
    scores = []
    for c in classes:
        tp = float(((pred == c) & (label == c)).sum())
        fp = float(((pred == c) & (label != c)).sum())
        fn = float(((pred != c) & (label == c)).sum())
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))
