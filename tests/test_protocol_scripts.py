"""tools/parse_results.py and tools/plot_results.py on a fabricated tree of metrics.json files with known numbers."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")

# (method, dataset, seed) -> (open-world base, new, accuracy); BMIP/dtd/seed3 is left out on purpose
OW = {(m, d, s): (40 + 3 * i + s, 20 + 2 * j + s * s, 30 + i + j + s)
      for i, m in enumerate(["CoOp", "BMIP"]) for j, d in enumerate(["dtd", "eurosat"]) for s in (1, 2, 3)}
MISSING = ("BMIP", "dtd", 3)


def hm(a, b):
    return 2 * a * b / (a + b)


def write_tree(root):
    for (m, d, s), (b, n, acc) in OW.items():
        if (m, d, s) == MISSING:
            continue
        run = os.path.join(root, "base2new", "test_all", d, "shots_16", m, "cfg", f"seed{s}")
        os.makedirs(run)
        with open(os.path.join(run, "metrics.json"), "w") as f:
            json.dump({"accuracy": acc, "subsample_classes": "all",
                       "base_to_new": {"base": b + 5, "new": n + 5, "hm": hm(b + 5, n + 5)},
                       "open_world": {"base": b, "new": n, "hm": hm(b, n), "accuracy": acc}}, f)


def run_tool(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


def test_parse_results_open_world_table_csv_and_missing_seed(tmp_path):
    write_tree(str(tmp_path))
    p = run_tool(os.path.join(TOOLS, "parse_results.py"), str(tmp_path), "--protocol", "open_world")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    # complete cell: CoOp on eurosat, HM mean ± population std over the 3 seeds, computed here
    hms = [hm(*OW[("CoOp", "eurosat", s)][:2]) for s in (1, 2, 3)]
    assert f"{np.mean(hms):.2f} ± {np.std(hms):.2f}" in out
    accs = [OW[("CoOp", "dtd", s)][2] for s in (1, 2, 3)]
    assert f"{np.mean(accs):.2f} ± {np.std(accs):.2f}" in out
    # the missing seed is named, not averaged over
    assert "BMIP/dtd/seed3" in out
    rows = list(csv.DictReader(open(tmp_path / "results_open_world.csv")))
    assert rows, "CSV is empty"
    row = next(r for r in rows if r["method"] == "CoOp" and r["dataset"] == "eurosat" and r["metric"] == "hm")
    assert float(row["mean"]) == pytest.approx(np.mean(hms), abs=1e-2)
    assert float(row["std"]) == pytest.approx(np.std(hms), abs=1e-2)
    # the transposed layout: CoOp's row holds the same cells, eurosat's HM among them
    p = run_tool(os.path.join(TOOLS, "parse_results.py"), str(tmp_path), "--protocol", "open_world", "--no-write",
                 "--methods-as-rows", "--datasets", "dtd", "eurosat")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    head = next(line for line in lines if line.startswith("| method"))
    coop = next(line for line in lines if line.startswith("| CoOp |"))
    cells = dict(zip(head.strip("|").split("|"), coop.strip("|").split("|")))
    assert cells[" eurosat HM "].strip() == f"{np.mean(hms):.2f} ± {np.std(hms):.2f}"
    assert cells[" dtd Acc "].strip() == f"{np.mean(accs):.2f} ± {np.std(accs):.2f}"
    assert " Average HM " in cells and "BMIP/dtd/seed3" in p.stdout


def test_plot_results_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    write_tree(str(tmp_path))
    png = tmp_path / "ow.png"
    p = run_tool(os.path.join(TOOLS, "plot_results.py"), str(tmp_path), "--out", str(png), "--allow-missing")
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_end_to_end_skip_and_resume(tmp_path):
    """base2new sweep of 2 datasets x 2 seeds with the tiny backbone, the table over it, then a second invocation
    skips every finished run, and an interrupted training (checkpoint, no metrics.json) is resumed."""
    data, out = tmp_path / "data", tmp_path / "out"
    p = run_tool(os.path.join(TOOLS, "make_fixture_data.py"), "--root", str(data), "--dataset", "dtd", "eurosat")
    assert p.returncode == 0, p.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1", B2N_EVAL="all")  # only the single pass over all classes
    sweep = [sys.executable, os.path.join(TOOLS, "sweep.py"), "--protocol", "base2new", "--trainers", "CoOp",
             "--datasets", "dtd", "eurosat", "--seeds", "1", "2", "--shots", "2", "--root", str(data),
             "--output", str(out), "--cpu", "MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0",
             "OPTIM.MAX_EPOCH", "1"]
    p = subprocess.run(sweep, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    metrics = sorted(out.glob("base2new/*/*/shots_2/CoOp/*/seed*/metrics.json"))
    assert len(metrics) == 8  # train_base + test_all for 2 datasets x 2 seeds
    # the table's cells equal mean ± std of the test_all files
    p = run_tool(os.path.join(TOOLS, "parse_results.py"), str(out), "--protocol", "open_world", "--seeds", "1", "2")
    assert p.returncode == 0, p.stderr
    accs = [json.load(open(out / f"base2new/test_all/dtd/shots_2/CoOp/vit_b16_ep50_ctxv1/seed{s}/metrics.json"))
            ["open_world"]["accuracy"] for s in (1, 2)]
    assert f"{np.mean(accs):.2f} ± {np.std(accs):.2f}" in p.stdout
    assert "missing" not in p.stdout
    # second invocation: everything is skipped, nothing rewritten
    mtimes = {m: m.stat().st_mtime_ns for m in metrics}
    p = subprocess.run(sweep, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    logs = "".join(f.read_text() for f in (out / "sweep_logs").glob("*.log"))
    assert logs.count("skip: results exist") >= 8
    assert {m: m.stat().st_mtime_ns for m in metrics} == mtimes
    # an interrupted training: its checkpoint is kept, its results are not
    train = out / "base2new/train_base/dtd/shots_2/CoOp/vit_b16_ep50_ctxv1/seed1"
    acc = json.load(open(train / "metrics.json"))["accuracy"]
    (train / "metrics.json").unlink()
    p = subprocess.run(sweep[:-6] + ["--seeds", "1", "--datasets", "dtd"] + sweep[-6:], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    logs = "".join(f.read_text() for f in (out / "sweep_logs").glob("*dtd*seed1*.log"))
    assert "resume:" in logs
    assert json.load(open(train / "metrics.json"))["accuracy"] == pytest.approx(acc)


def test_transfer_and_few_shot_sweeps_end_to_end(tmp_path):
    """Cross-dataset, domain generalization and few-shot sweeps with the tiny backbone on miniature layouts: the
    domain-generalization sweep reuses the ImageNet training of the cross-dataset one, and each table's cell equals
    the accuracy in the metrics.json it comes from."""
    data, out = tmp_path / "data", tmp_path / "out"
    p = run_tool(os.path.join(TOOLS, "make_fixture_data.py"), "--root", str(data), "--dataset", "imagenet",
                 "imagenet_r", "dtd")
    assert p.returncode == 0, p.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def sweep(protocol, *args):
        cmd = [sys.executable, os.path.join(TOOLS, "sweep.py"), "--protocol", protocol, "--trainers", "CoOp",
               "--seeds", "1", "--root", str(data), "--output", str(out), "--cpu", *args,
               "MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        assert p.returncode == 0, p.stdout + p.stderr

    def accuracy(*parts):
        with open(out.joinpath(*parts, "metrics.json")) as f:
            return json.load(f)["accuracy"]

    def table(protocol):
        p = run_tool(os.path.join(TOOLS, "parse_results.py"), str(out), "--protocol", protocol, "--seeds", "1",
                     "--no-write")
        assert p.returncode == 0, p.stderr
        assert "missing" not in p.stdout
        return p.stdout

    sweep("cross_dataset", "--datasets", "dtd", "--shots", "2")
    source = ("imagenet", "CoOp", "vit_b16_ep50_ctxv1_2shots", "seed1")
    assert f"| dtd | {accuracy('evaluation', 'CoOp', 'vit_b16_ep50_ctxv1_2shots', 'dtd', 'seed1'):.2f} ± 0.00 |" \
        in table("cross_dataset")
    trained = out.joinpath(*source, "metrics.json").stat().st_mtime_ns

    sweep("domain_generalization", "--datasets", "imagenet_r", "--shots", "2")
    assert out.joinpath(*source, "metrics.json").stat().st_mtime_ns == trained  # the same ImageNet weights
    dg = table("domain_generalization")
    assert f"| imagenet (source) | {accuracy(*source):.2f} ± 0.00 |" in dg
    assert f"| imagenet_r | {accuracy('evaluation', 'CoOp', 'vit_b16_ep50_ctxv1_2shots', 'imagenet_r', 'seed1'):.2f}" \
        in dg

    sweep("few_shot", "--datasets", "dtd", "--shots", "1", "2")
    few = table("few_shot")
    for shots in (1, 2):
        assert f"{accuracy('dtd', 'CoOp', f'vit_b16_ep50_ctxv1_{shots}shots', 'seed1'):.2f} ± 0.00" in few
