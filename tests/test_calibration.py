"""ECE and NLL in the evaluator (and per half in the base-to-new / open-world blocks), and their tables."""
import json
import math
import os
import sys

import pytest
import torch

from vlprompt.engine.evaluator import ClassificationEvaluator, expected_calibration_error

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import parse_results  # noqa: E402


def test_ece_by_hand():
    # 15 bins of width 1/15: 0.30 and 0.32 share (4/15, 5/15]; 0.55 is alone in (8/15, 9/15]; 0.95 and 0.99 share
    # (14/15, 1]. Bin gaps: |1/2 - 0.31| = 0.19, |0 - 0.55| = 0.55, |1/2 - 0.97| = 0.47
    confidence = [0.30, 0.32, 0.55, 0.95, 0.99]
    correct = [True, False, False, True, False]
    expected = 100 * (2 / 5 * 0.19 + 1 / 5 * 0.55 + 2 / 5 * 0.47)
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected, abs=1e-9)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert expected_calibration_error([1 / 15 - 1e-9, 1 / 15 + 1e-9], [True, True]) == pytest.approx(
        100 * (1 - (2 / 15) / 2), abs=1e-6)  # two bins, each with accuracy 1


def independent_ece(probs, labels, bins=15):
    conf = [max(row) for row in probs]
    pred = [row.index(max(row)) for row in probs]
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(conf) if lo < c <= hi]
        if members:
            acc = sum(pred[i] == labels[i] for i in members) / len(members)
            avg = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(conf) * abs(acc - avg)
    return 100 * total


def softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def test_evaluator_ece_nll_and_halves_against_a_plain_computation():
    torch.manual_seed(0)
    logits = torch.randn(40, 5) * 3
    labels = torch.randint(0, 5, (40,))
    ev = ClassificationEvaluator(base_new=True)
    ev.process(logits[:25], labels[:25])
    ev.process(logits[25:], labels[25:])
    results = ev.evaluate(verbose=False)
    rows, lab = logits.tolist(), labels.tolist()
    probs = [softmax(r) for r in rows]
    assert results["ece"] == pytest.approx(independent_ece(probs, lab), abs=1e-9)
    assert results["nll"] == pytest.approx(sum(-math.log(p[y]) for p, y in zip(probs, lab)) / 40, abs=1e-9)

    blocks = ev.base_new_results()
    m = 3  # ceil(5 / 2) base classes
    base = [i for i in range(40) if lab[i] < m]
    new = [i for i in range(40) if lab[i] >= m]
    base_probs = [softmax(rows[i][:m]) for i in base]  # base samples among the base classes
    new_probs = [softmax(rows[i][m:]) for i in new]  # new samples among the new classes
    b2n = blocks["base_to_new"]
    assert b2n["base_ece"] == pytest.approx(independent_ece(base_probs, [lab[i] for i in base]), abs=1e-9)
    assert b2n["new_ece"] == pytest.approx(independent_ece(new_probs, [lab[i] - m for i in new]), abs=1e-9)
    assert b2n["new_nll"] == pytest.approx(
        sum(-math.log(p[lab[i] - m]) for p, i in zip(new_probs, new)) / len(new), abs=1e-9)
    ow = blocks["open_world"]  # each half among all classes
    assert ow["base_ece"] == pytest.approx(independent_ece([probs[i] for i in base], [lab[i] for i in base]), abs=1e-9)
    assert ow["ece"] == pytest.approx(results["ece"], abs=1e-12)
    assert ow["new_nll"] == pytest.approx(sum(-math.log(probs[i][lab[i]]) for i in new) / len(new), abs=1e-9)

    # gathered from several processes: the same numbers
    other = ClassificationEvaluator(base_new=True)
    other.load_state([ev.state()])
    assert other.evaluate(verbose=False)["ece"] == results["ece"]


def test_parse_results_tabulates_calibration(tmp_path, capsys):
    values = {1: (10.0, 20.0, 1.5, 2.5), 2: (14.0, 30.0, 1.7, 2.9)}  # seed -> base/new ECE, base/new NLL
    for seed, (be, ne, bn, nn) in values.items():
        folder = tmp_path / "base2new/test_all/eurosat/shots_16/CoOp/vit_b16_ep50" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "accuracy": 50.0, "ece": 99.0, "nll": 9.9,
            "base_to_new": {"base": 60.0, "new": 40.0, "hm": 48.0, "base_ece": be, "new_ece": ne, "base_nll": bn,
                            "new_nll": nn},
            "open_world": {"base": 50.0, "new": 30.0, "hm": 37.5, "accuracy": 40.0, "base_ece": be + 1,
                           "new_ece": ne + 1, "ece": 7.0, "base_nll": bn, "new_nll": nn, "nll": 3.0}}))
    markdown, rows, _ = parse_results.parse(str(tmp_path), "base2new", seeds=[1, 2], metric="ece")
    got = {r["metric"]: float(r["mean"]) for r in rows if r["dataset"] == "eurosat"}
    assert got == {"base_ece": 12.0, "new_ece": 25.0}  # no HM of calibration errors
    assert "ECE" in markdown and "12.00 ± 2.00" in markdown
    _, rows, _ = parse_results.parse(str(tmp_path), "open_world", seeds=[1, 2], metric="nll")
    got = {r["metric"]: float(r["mean"]) for r in rows if r["dataset"] == "eurosat"}
    assert got == {"base_nll": 1.6, "new_nll": 2.7, "accuracy_nll": 3.0}
    # accuracy tables are unchanged afterwards, and the CLI writes the calibration table under its own name
    _, rows, _ = parse_results.parse(str(tmp_path), "base2new", seeds=[1, 2])
    assert {r["metric"] for r in rows} == {"base", "new", "hm"}
    assert parse_results.main([str(tmp_path), "--protocol", "base2new", "--seeds", "1", "2", "--metric", "ece"]) == 0
    assert (tmp_path / "results_base2new_ece.md").is_file() and not (tmp_path / "results_base2new.md").exists()
