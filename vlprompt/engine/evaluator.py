"""Classification metrics with Dassl's printed format (the official parse_test_res.py reads it)."""
import math
from collections import OrderedDict

import numpy as np
import torch


CONFUSION_MATRIX_MAX_CLASSES = 200
ECE_BINS = 15


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """ECE in percent: bins of equal width over (0, 1] (bin b holds confidences in (b/bins, (b+1)/bins]), and
    the sum over bins of |B|/N * |accuracy(B) - mean confidence(B)| (Guo et al., 2017)."""
    confidence = torch.as_tensor(confidence, dtype=torch.float64).view(-1)
    correct = torch.as_tensor(correct, dtype=torch.float64).view(-1)
    if confidence.numel() == 0:
        return 0.0
    # ceil(c * bins) - 1: the bin whose upper edge is the first >= c; c = 0 joins the first bin
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    gap = (torch.bincount(index, weights=correct, minlength=bins)
           - torch.bincount(index, weights=confidence, minlength=bins)).abs()
    return 100.0 * float(gap.sum() / count.sum())


def _confidence_and_nll(logits: torch.Tensor, labels: torch.Tensor):
    """Per sample: the top softmax probability, and the negative log-probability of its label (nan where the
    label is not among the logits' columns, e.g. a new-class sample among the base classes)."""
    log_probs = torch.log_softmax(logits.double(), dim=1)
    confidence = log_probs.max(dim=1).values.exp()
    inside = (labels >= 0) & (labels < logits.shape[1])
    picked = log_probs.gather(1, labels.clamp(0, logits.shape[1] - 1).view(-1, 1)).squeeze(1)
    nll = torch.where(inside, -picked, torch.full_like(picked, float("nan")))
    return confidence.cpu(), nll.cpu()


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
        # calibration: top probability and label NLL over all classes, and within each half (base_new)
        self._conf, self._nll, self._conf_base, self._nll_base, self._conf_new, self._nll_new = [], [], [], [], [], []
        self.num_classes = 0

    def process(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.num_classes = logits.shape[1]
        self._pred.append(logits.argmax(dim=1).cpu())
        self._label.append(labels.cpu())
        conf, nll = _confidence_and_nll(logits, labels)
        self._conf.append(conf)
        self._nll.append(nll)
        if self.base_new and self.num_classes >= 2:
            m = math.ceil(self.num_classes / 2)
            self._pred_base.append(logits[:, :m].argmax(dim=1).cpu())
            self._pred_new.append(logits[:, m:].argmax(dim=1).cpu() + m)
            for half, label, conf_list, nll_list in ((logits[:, :m], labels, self._conf_base, self._nll_base),
                                                     (logits[:, m:], labels - m, self._conf_new, self._nll_new)):
                conf, nll = _confidence_and_nll(half, label)
                conf_list.append(conf)
                nll_list.append(nll)

    _FIELDS = ("_pred", "_label", "_pred_base", "_pred_new", "_conf", "_nll", "_conf_base", "_nll_base",
               "_conf_new", "_nll_new")

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

        pred_base, pred_new = torch.cat(self._pred_base), torch.cat(self._pred_new)
        b2n_base, b2n_new = acc(pred_base, base), acc(pred_new, ~base)
        ow_base, ow_new = acc(pred, base), acc(pred, ~base)

        def calibration(conf, nll, p, mask):
            conf, nll = torch.cat(conf)[mask], torch.cat(nll)[mask]
            return expected_calibration_error(conf, p[mask] == label[mask]), float(nll.mean())

        # base-to-new: each half's samples among its own classes; open-world: among all classes
        b2n_ece_base, b2n_nll_base = calibration(self._conf_base, self._nll_base, pred_base, base)
        b2n_ece_new, b2n_nll_new = calibration(self._conf_new, self._nll_new, pred_new, ~base)
        ow_ece_base, ow_nll_base = calibration(self._conf, self._nll, pred, base)
        ow_ece_new, ow_nll_new = calibration(self._conf, self._nll, pred, ~base)
        everything = torch.ones_like(base)
        ow_ece, ow_nll = calibration(self._conf, self._nll, pred, everything)
        return {
            "num_base_classes": m, "num_new_classes": self.num_classes - m,
            "num_base_samples": int(base.sum()), "num_new_samples": int((~base).sum()),
            "base_to_new": {"base": b2n_base, "new": b2n_new, "hm": harmonic_mean(b2n_base, b2n_new),
                            "base_ece": b2n_ece_base, "new_ece": b2n_ece_new,
                            "base_nll": b2n_nll_base, "new_nll": b2n_nll_new},
            "open_world": {"base": ow_base, "new": ow_new, "hm": harmonic_mean(ow_base, ow_new),
                           "accuracy": acc(pred, everything),
                           "base_ece": ow_ece_base, "new_ece": ow_ece_new, "ece": ow_ece,
                           "base_nll": ow_nll_base, "new_nll": ow_nll_new, "nll": ow_nll},
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
        if self._conf:  # calibration (percent; nats): how far the top probability is from the accuracy
            results["ece"] = expected_calibration_error(torch.cat(self._conf), torch.from_numpy(pred == label))
            nll = torch.cat(self._nll)
            results["nll"] = float(nll[~nll.isnan()].mean()) if (~nll.isnan()).any() else float("nan")
        self.details = {"total": total, "correct": correct, "classes": [int(c) for c in classes]}
        if verbose:
            print("=> result")
            print(f"* total: {total:,}")
            print(f"* correct: {correct:,}")
            print(f"* accuracy: {acc:.1f}%")
            print(f"* error: {100.0 - acc:.1f}%")
            print(f"* macro_f1: {results['macro_f1']:.1f}%")
            if "ece" in results:
                print(f"* ece: {results['ece']:.2f}%")
                print(f"* nll: {results['nll']:.4f}")
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
