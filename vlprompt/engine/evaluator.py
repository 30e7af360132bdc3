"""Classification metrics with Dassl's printed format (the official parse_test_res.py reads it)."""
import math
from collections import OrderedDict

import numpy as np
import torch


CONFUSION_MATRIX_MAX_CLASSES = 200


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


class ClassificationEvaluator:
    """Accuracy, error, macro F1 (and per-class accuracy); with base_new, also the base-to-new and open-world
    numbers of an evaluation over all classes, whose first ceil(C/2) labels are the base classes (CoOp's rule):
      base-to-new: base samples among the base classes, new samples among the new classes, their HM;
      open-world (BMIP): base and new samples among ALL classes, their HM, and the overall accuracy."""

    def __init__(self, lab2cname=None, per_class=False, base_new=False):
        self.lab2cname = lab2cname or {}
        self.per_class = per_class
        self.base_new = base_new
        self.reset()

    def reset(self):
        self._pred, self._label, self._pred_base, self._pred_new = [], [], [], []
        self.num_classes = 0

    def process(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.num_classes = logits.shape[1]
        self._pred.append(logits.argmax(dim=1).cpu())
        self._label.append(labels.cpu())
        if self.base_new and self.num_classes >= 2:
            m = math.ceil(self.num_classes / 2)
            self._pred_base.append(logits[:, :m].argmax(dim=1).cpu())
            self._pred_new.append(logits[:, m:].argmax(dim=1).cpu() + m)

    _FIELDS = ("_pred", "_label", "_pred_base", "_pred_new")

    def state(self) -> dict:
        """The per-sample records so far (to gather them from several processes)."""
        out = {f: torch.cat(getattr(self, f)) if getattr(self, f) else None for f in self._FIELDS}
        out["num_classes"] = self.num_classes
        return out

    def load_state(self, states, select=None) -> None:
        """Replace the records by the concatenation of `states` (from state()), keeping rows `select`."""
        self.reset()
        self.num_classes = max((s["num_classes"] for s in states), default=0)
        for f in self._FIELDS:
            parts = [s[f] for s in states if s[f] is not None]
            if parts:
                joined = torch.cat(parts)
                getattr(self, f).append(joined if select is None else joined[select])

    def base_new_results(self):
        """Base-to-new and open-world accuracies (percent), or None when not measurable."""
        if not self._pred_base:
            return None
        label, pred = torch.cat(self._label), torch.cat(self._pred)
        m = math.ceil(self.num_classes / 2)
        base = label < m
        if not base.any() or base.all():
            return None

        def acc(p, mask):
            return 100.0 * (p[mask] == label[mask]).double().mean().item()

        b2n_base, b2n_new = acc(torch.cat(self._pred_base), base), acc(torch.cat(self._pred_new), ~base)
        ow_base, ow_new = acc(pred, base), acc(pred, ~base)
        return {
            "num_base_classes": m, "num_new_classes": self.num_classes - m,
            "num_base_samples": int(base.sum()), "num_new_samples": int((~base).sum()),
            "base_to_new": {"base": b2n_base, "new": b2n_new, "hm": harmonic_mean(b2n_base, b2n_new)},
            "open_world": {"base": ow_base, "new": ow_new, "hm": harmonic_mean(ow_base, ow_new),
                           "accuracy": acc(pred, torch.ones_like(base))},
        }

    def confusion_matrix(self):
        """[true][predicted] counts, for at most CONFUSION_MATRIX_MAX_CLASSES classes."""
        if not self._pred or not 0 < self.num_classes <= CONFUSION_MATRIX_MAX_CLASSES:
            return None
        label, pred = torch.cat(self._label), torch.cat(self._pred)
        counts = torch.bincount(label * self.num_classes + pred, minlength=self.num_classes ** 2)
        return counts.view(self.num_classes, self.num_classes).tolist()

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
        base_new = self.base_new_results()
        if base_new is not None and verbose:
            b, o = base_new["base_to_new"], base_new["open_world"]
            print(f"=> base-to-new ({base_new['num_base_classes']} base / {base_new['num_new_classes']} new classes)")
            print(f"* base: {b['base']:.1f}%\n* new: {b['new']:.1f}%\n* HM: {b['hm']:.1f}%")
            print("=> open-world (all classes as candidates)")
            print(f"* base: {o['base']:.1f}%\n* new: {o['new']:.1f}%\n* HM: {o['hm']:.1f}%\n* acc: {o['accuracy']:.1f}%")
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
