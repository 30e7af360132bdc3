"""Tables of mean +- std over seeds from the metrics.json files that the protocol scripts write.

    python tools/parse_results.py OUTPUT_ROOT [--protocol base2new|open_world|cross_dataset|domain_generalization|few_shot]

Reads JSON only (never logs), from the folders of scripts/*.sh (docs/protocols.md):
  base2new/{train_base,test_new,test_all}/<dataset>/shots_<S>/<trainer>/<cfg>/seed<s>/metrics.json
  <dataset>/<trainer>/<cfg>_<S>shots/seed<s>/metrics.json             (few-shot; the cross-dataset source)
  evaluation/<trainer>/<cfg>_<S>shots/<dataset>/seed<s>/metrics.json  (cross-dataset, domain generalization)

Tables: rows are datasets plus "Average", columns are methods (a trainer; trainer/cfg when one trainer was run
with several configs on one dataset). A cell is the mean +- std (population std, as CoOp's parse_test_res) over
--seeds. A cell that lacks a seed is not averaged: it reads "missing k/n" and the run is listed
("missing: BMIP/eurosat/seed3"); --allow-missing averages what exists and marks the cell with "*".
The Average row averages, per seed, over the datasets (HM: the harmonic mean of the averaged base and new
accuracies, as in the CoCoOp/MaPLe/BMIP tables), then takes mean +- std over seeds.

The Markdown is printed and written to OUTPUT_ROOT/results_<protocol>.md, the numbers (long format: one row
per method, dataset and metric) to OUTPUT_ROOT/results_<protocol>.csv (--csv / --markdown to change).
"""
import argparse
import contextlib
import csv
import dataclasses
import json
import os
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field

PROTOCOLS = ["base2new", "open_world", "cross_dataset", "domain_generalization", "few_shot"]
# CoOp's order of the 11 benchmarks, then the ImageNet variants; other datasets follow alphabetically.
DATASET_ORDER = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
DG_TARGETS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
# column order: --methods order if given, else this one (the papers' order), then others alphabetically
METHOD_ORDER = ["ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "VPT", "IVLP", "MaPLe", "BMIP", "HiCroPL"]
B2N_FOLDERS = ("train_base", "test_new", "test_all", "test_base")
TITLES = {
    "base2new": "Base-to-new generalization (accuracy %: base classes, new classes, their harmonic mean)",
    "open_world": "Open-world generalization (BMIP): all classes as candidates; HM of base and new samples' "
                  "accuracy, and overall accuracy (%)",
    "cross_dataset": "Cross-dataset transfer: trained on {source}, accuracy (%) on each dataset",
    "domain_generalization": "Domain generalization: trained on {source}, accuracy (%) on ImageNet variants",
    "few_shot": "Few-shot learning: accuracy (%) per number of shots (all classes)",
}
# (metric key, column header) per protocol
METRICS = {
    "base2new": [("base", "Base"), ("new", "New"), ("hm", "HM")],
    "open_world": [("hm", "HM"), ("accuracy", "Acc")],
    "cross_dataset": [("accuracy", "Acc")],
    "domain_generalization": [("accuracy", "Acc")],
    "few_shot": [("accuracy", "Acc")],
}
SEED_RE = re.compile(r"^seed(-?\d+)$")
SHOTS_RE = re.compile(r"^shots_(-?\d+)$")
CFG_SHOTS_RE = re.compile(r"^(.+)_(-?\d+)shots$")


def harmonic_mean(a, b):
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def method_key(label, methods=None):
    trainer = label.split("/")[0]
    order = list(methods or []) + METHOD_ORDER
    for name in (label, trainer):
        if name in order:
            return (order.index(name), label)
    return (len(order), label)


def dataset_key(name):
    order = DATASET_ORDER + DG_TARGETS
    return (order.index(name), "") if name in order else (len(order), name)


@dataclass
class Run:
    kind: str  # train_base / test_new / test_all / test_base / train / evaluation
    dataset: str
    trainer: str
    cfg: str
    shots: int
    seed: int
    path: str
    _metrics: dict = field(default=None, repr=False)

    @property
    def metrics(self):
        if self._metrics is None:
            with open(self.path) as f:
                self._metrics = json.load(f)
        return self._metrics


def classify(parts):
    """The Run fields of a metrics.json path (relative to the output root, without the file name), or None."""
    if not parts or not SEED_RE.match(parts[-1]):
        return None
    seed = int(SEED_RE.match(parts[-1]).group(1))
    if len(parts) == 7 and parts[0] == "base2new" and parts[1] in B2N_FOLDERS and SHOTS_RE.match(parts[3]):
        return dict(kind=parts[1], dataset=parts[2], shots=int(SHOTS_RE.match(parts[3]).group(1)),
                    trainer=parts[4], cfg=parts[5], seed=seed)
    if len(parts) == 5 and parts[0] == "evaluation" and CFG_SHOTS_RE.match(parts[2]):
        m = CFG_SHOTS_RE.match(parts[2])
        return dict(kind="evaluation", dataset=parts[3], trainer=parts[1], cfg=m.group(1), shots=int(m.group(2)),
                    seed=seed)
    if len(parts) == 4 and parts[0] not in ("base2new", "evaluation") and CFG_SHOTS_RE.match(parts[2]):
        m = CFG_SHOTS_RE.match(parts[2])
        return dict(kind="train", dataset=parts[0], trainer=parts[1], cfg=m.group(1), shots=int(m.group(2)),
                    seed=seed)
    return None


def discover(root):
    runs = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if "metrics.json" not in files:
            continue
        rel = os.path.relpath(folder, root)
        fields = classify(rel.split(os.sep))
        if fields is not None:
            path = os.path.join(folder, "metrics.json")
            metrics = read_metrics(path)
            if metrics is not None:
                runs.append(Run(path=path, _metrics=metrics, **fields))
    return runs


def read_metrics(path):
    """The metrics of a run, or None (with a warning naming the file) when the file is unreadable, truncated or
    lacks the accuracy: one damaged run must not hide the others."""
    try:
        with open(path) as f:
            metrics = json.load(f)
        if not isinstance(metrics, dict) or not isinstance(metrics.get("accuracy"), (int, float)):
            raise ValueError("no accuracy in it")
        return metrics
    except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        print(f"warning: skipped {path}: unreadable or truncated ({type(e).__name__}: {e})", file=sys.stderr)
        return None


# ---- per-protocol records: (trainer, cfg, dataset, shots, seed) -> {metric: value} ----------------------------
@dataclass
class Records:
    values: dict = field(default_factory=dict)  # (trainer, cfg, dataset, shots, seed) -> {metric: value}
    notes: list = field(default_factory=list)
    source: str = ""  # cross-dataset / domain generalization: the row of the training dataset


def b2n_records(runs, open_world):
    by_kind = defaultdict(dict)
    for r in runs:
        if r.kind in B2N_FOLDERS:
            by_kind[r.kind][(r.trainer, r.cfg, r.dataset, r.shots, r.seed)] = r
    rec = Records()
    single = two_run = 0
    keys = set(by_kind["test_all"]) | (set() if open_world else set(by_kind["train_base"]) | set(by_kind["test_new"]))
    for key in keys:
        full = by_kind["test_all"].get(key)
        if open_world:
            ow = full.metrics.get("open_world") if full else None
            if ow:
                rec.values[key] = {"hm": ow["hm"], "accuracy": ow["accuracy"], "base": ow["base"], "new": ow["new"]}
            continue
        b2n = full.metrics.get("base_to_new") if full else None
        if b2n:
            rec.values[key] = {"base": b2n["base"], "new": b2n["new"], "hm": b2n["hm"]}
            single += 1
        elif key in by_kind["train_base"] and key in by_kind["test_new"]:
            base = by_kind["train_base"][key].metrics["accuracy"]
            new = by_kind["test_new"][key].metrics["accuracy"]
            rec.values[key] = {"base": base, "new": new, "hm": harmonic_mean(base, new)}
            two_run += 1
    if open_world:
        rec.notes.append("From the single evaluation over all classes (base2new/test_all/.../metrics.json: open_world).")
    else:
        rec.notes.append(f"Base/new from the single pass over all classes (test_all: base_to_new) for {single} runs, "
                         f"from train_base + test_new (the official two-run flow) for {two_run}.")
    return rec


def transfer_records(runs, protocol, source):
    rec = Records(source=source)
    targets = {}
    for r in runs:
        if r.kind != "evaluation" or r.dataset == source:
            continue
        if (r.dataset in DG_TARGETS) == (protocol == "domain_generalization"):
            targets[(r.trainer, r.cfg, r.dataset, r.shots, r.seed)] = {"accuracy": r.metrics["accuracy"]}
    rec.values.update(targets)
    methods = {(t, c, s) for (t, c, _, s, _) in targets}
    # the source row: the training run's own test (or an evaluation of it on the source, made the official way)
    for r in runs:
        if r.dataset == source and (r.trainer, r.cfg, r.shots) in methods and r.kind in ("train", "evaluation"):
            key = (r.trainer, r.cfg, r.dataset, r.shots, r.seed)
            if r.kind == "train" or key not in rec.values:
                rec.values[key] = {"accuracy": r.metrics["accuracy"]}
    rec.notes.append(f"Trained on {source} (its row: the training run's test); evaluated on the others with the same "
                     f"weights. The Average row is over the target datasets only.")
    return rec


def few_shot_records(runs, source):
    """Training runs on all classes, less the source runs of cross-dataset / DG evaluations: those share the
    few-shot folder layout, but only the source dataset's run of a method that was also evaluated elsewhere."""
    rec = Records()
    transferred = {(r.trainer, r.cfg, r.shots) for r in runs if r.kind == "evaluation"}
    for r in runs:
        is_source = r.dataset == source and (r.trainer, r.cfg, r.shots) in transferred
        if r.kind == "train" and not is_source and r.metrics.get("subsample_classes", "all") == "all":
            rec.values[(r.trainer, r.cfg, r.dataset, r.shots, r.seed)] = {"accuracy": r.metrics["accuracy"]}
    return rec


# ---- tables ------------------------------------------------------------------------------------------------
def method_labels(keys):
    """(trainer, cfg) -> column label: the trainer, or trainer/cfg where it ran with several configs on one
    dataset and number of shots (a trainer whose config differs by dataset, e.g. HiCroPL on ImageNet, is one)."""
    cfgs = defaultdict(set)
    for trainer, cfg, dataset, shots, _ in keys:
        cfgs[(trainer, dataset, shots)].add(cfg)
    split = {t for (t, _, _), c in cfgs.items() if len(c) > 1}
    return {(t, c): (f"{t}/{c}" if t in split else t) for (t, c, *_rest) in keys}


def mean_std(values):
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def average_metrics(per_dataset, metrics):
    """One seed's Average over datasets: the mean of each metric; HM from the mean base and new if both exist."""
    out = {m: statistics.fmean(d[m] for d in per_dataset) for m in metrics if all(m in d for d in per_dataset)}
    if "hm" in out and all("base" in d and "new" in d for d in per_dataset):
        out["hm"] = harmonic_mean(statistics.fmean(d["base"] for d in per_dataset),
                                  statistics.fmean(d["new"] for d in per_dataset))
    return out


@dataclass
class Cell:
    values: dict  # seed -> value
    expected: list

    @property
    def complete(self):
        return all(s in self.values for s in self.expected)


def build(protocol, rec, seeds, datasets=None, methods=None, shots=None):
    """The tables of one protocol: a list of dicts with title, columns, rows (label -> {column: Cell}),
    missing run names and CSV rows."""
    metric_keys = [m for m, _ in METRICS[protocol]]
    extra = ["base", "new"] if protocol in ("open_world",) else []
    keys = list(rec.values)
    if methods:
        keys = [k for k in keys if k[0] in methods or f"{k[0]}/{k[1]}" in methods]
    if shots:
        keys = [k for k in keys if k[3] in shots]
    labels = method_labels(keys)
    if protocol == "few_shot":
        groups = {None: keys}
    else:  # one table per number of shots (normally one: 16)
        groups = defaultdict(list)
        for k in keys:
            groups[k[3]].append(k)
    tables = []
    for setting, gkeys in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        found_ds = {k[2] for k in gkeys}
        if datasets:
            ds = list(datasets)
        else:
            ds = sorted(found_ds - {rec.source}, key=dataset_key)
        rows_ds = ([rec.source] if rec.source else []) + [d for d in ds if d != rec.source]
        avg_ds = [d for d in rows_ds if d != rec.source]
        method_order = sorted({labels[(k[0], k[1])] for k in gkeys}, key=lambda m: method_key(m, methods))
        if protocol == "few_shot":
            shot_list = sorted({k[3] for k in gkeys}) if not shots else sorted(shots)
            columns = [(m, s) for m in method_order for s in shot_list]
        else:
            columns = [(m, setting) for m in method_order]
        # (label, shots, dataset) -> seed -> metrics
        data = defaultdict(dict)
        for k in gkeys:
            trainer, cfg, dataset, s, seed = k
            data[(labels[(trainer, cfg)], s, dataset)][seed] = rec.values[k]
        missing = []
        rows = {}
        for dataset in rows_ds:
            rows[dataset] = {}
            for col in columns:
                got = data.get((col[0], col[1], dataset), {})
                for seed in seeds:
                    if seed not in got:
                        shot_part = f"/{col[1]}shots" if protocol == "few_shot" else ""
                        missing.append(f"{col[0]}/{dataset}{shot_part}/seed{seed}")
                rows[dataset][col] = {m: Cell({s: got[s][m] for s in seeds if s in got and m in got[s]}, seeds)
                                      for m in metric_keys + extra}
        rows["Average"] = {}
        for col in columns:
            per_seed = {}
            for seed in seeds:
                per_ds = [data.get((col[0], col[1], d), {}).get(seed) for d in avg_ds]
                if avg_ds and all(v is not None for v in per_ds):
                    per_seed[seed] = average_metrics(per_ds, metric_keys + extra)
            rows["Average"][col] = {m: Cell({s: v[m] for s, v in per_seed.items() if m in v}, seeds)
                                    for m in metric_keys + extra}
        tables.append(dict(setting=setting, columns=columns, rows=rows, missing=missing, datasets=rows_ds))
    return tables


def fmt(cell, allow_missing, decimals):
    vals = [cell.values[s] for s in cell.expected if s in cell.values]
    if cell.complete:
        m, s = mean_std(vals)
        return f"{m:.{decimals}f} ± {s:.{decimals}f}"
    if allow_missing and vals:
        m, s = mean_std(vals)
        return f"{m:.{decimals}f} ± {s:.{decimals}f}*"
    return f"missing {len(vals)}/{len(cell.expected)}"


def render(protocol, tables, rec, seeds, allow_missing, decimals, methods_as_rows=False):
    lines = []
    seeds_txt = " ".join(map(str, seeds))
    for t in tables:
        title = TITLES[protocol].format(source=rec.source or "imagenet")
        setting = f", {t['setting']} shots" if t["setting"] is not None else ""
        lines.append(f"### {title}{setting}; mean ± std over seeds {seeds_txt}")
        lines.append("")
        if not t["columns"]:
            lines.append("(no results found)")
            lines.append("")
            continue
        table, starred = (method_rows if methods_as_rows else dataset_rows)(protocol, t, rec, allow_missing, decimals)
        lines += table
        lines.append("")
        for note in rec.notes:
            lines.append(note)
        if starred:
            lines.append("`*`: averaged over the seeds that exist (--allow-missing), fewer than asked for.")
        if t["missing"]:
            lines.append(f"{len(t['missing'])} missing run(s), not averaged over"
                         f"{' (cells marked *)' if allow_missing else ''}:")
            lines += [f"- missing: {m}" for m in t["missing"]]
        lines.append("")
    return "\n".join(lines)


def column_name(protocol, col):
    return col[0] if protocol != "few_shot" else f"{col[0]} {col[1]}-shot"


def dataset_rows(protocol, t, rec, allow_missing, decimals):
    """The papers' layout: a dataset per row (and the Average), a (method, metric) per column.
    Returns (Markdown lines, whether a cell is starred)."""
    headers = METRICS[protocol]
    head = ["dataset"]
    for col in t["columns"]:
        head += [f"{column_name(protocol, col)} {h}" if len(headers) > 1 else column_name(protocol, col)
                 for _, h in headers]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    starred = False
    for label, cells in t["rows"].items():
        shown = f"{label} (source)" if label == rec.source else label
        row = [f"**{shown}**" if label == "Average" else shown]
        for col in t["columns"]:
            for key, _ in headers:
                text = fmt(cells[col][key], allow_missing, decimals)
                starred |= text.endswith("*")
                row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines, starred


def method_rows(protocol, t, rec, allow_missing, decimals):
    """The transposed layout (--methods-as-rows), compact for one or two datasets: a method per row, a
    (dataset, metric) per column; with a single dataset, its name is left out of the headers."""
    headers = METRICS[protocol]
    datasets = [d for d in t["rows"] if d != "Average"]
    if len(datasets) > 1:
        datasets.append("Average")
    head = ["method"] + [f"{d} {h}" if len(datasets) > 1 else h for d in datasets for _, h in headers]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    starred = False
    for col in t["columns"]:
        row = [column_name(protocol, col)]
        for d in datasets:
            for key, _ in headers:
                text = fmt(t["rows"][d][col][key], allow_missing, decimals)
                starred |= text.endswith("*")
                row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines, starred


def csv_rows(protocol, tables, rec, seeds):
    out = []
    for t in tables:
        for label, cells in t["rows"].items():
            for col in t["columns"]:
                for key, cell in cells[col].items():
                    found = [s for s in seeds if s in cell.values]
                    vals = [cell.values[s] for s in found]
                    m, s = mean_std(vals) if vals else (None, None)
                    out.append({"protocol": protocol, "shots": col[1] if col[1] is not None else "",
                                "method": col[0], "dataset": label, "metric": key,
                                "mean": "" if m is None else f"{m:.4f}", "std": "" if s is None else f"{s:.4f}",
                                "n_seeds": len(vals), "seeds_expected": " ".join(map(str, seeds)),
                                "seeds_found": " ".join(map(str, found)), "complete": cell.complete,
                                "values": " ".join(f"{v:.4f}" for v in vals),
                                "source": "yes" if label == rec.source else ""})
    return out


def records_for(protocol, runs, source):
    if protocol in ("base2new", "open_world"):
        return b2n_records(runs, protocol == "open_world")
    if protocol in ("cross_dataset", "domain_generalization"):
        return transfer_records(runs, protocol, source)
    return few_shot_records(runs, source)


# ---- calibration tables (--metric ece | nll): the same tables with a calibration metric in place of accuracy ----
CALIBRATION = {"ece": "ECE (%, 15 equal-width bins)", "nll": "NLL (nats)"}


def calibration_runs(runs, metric):
    """Runs whose metrics read `metric` where the tables read accuracy: the whole set's, and each half's in the
    base_to_new / open_world blocks (base_<metric>, new_<metric>). A run without it reads nan."""
    nan = float("nan")
    out = []
    for r in runs:
        m = r.metrics
        view = dict(m, accuracy=m.get(metric, nan))
        for block in ("base_to_new", "open_world"):
            if m.get(block):
                b = m[block]
                view[block] = dict(b, base=b.get(f"base_{metric}", nan), new=b.get(f"new_{metric}", nan), hm=nan,
                                   accuracy=b.get(metric, nan))
        out.append(dataclasses.replace(r, _metrics=view))
    return out


@contextlib.contextmanager
def calibration_tables(metric):
    """METRICS and TITLES for a calibration metric: base and new columns (no HM: a harmonic mean of calibration
    errors means nothing), the whole set's value elsewhere."""
    saved_metrics, saved_titles = dict(METRICS), dict(TITLES)
    name = CALIBRATION[metric]
    METRICS.update(base2new=[("base", "Base"), ("new", "New")],
                   open_world=[("base", "Base"), ("new", "New"), ("accuracy", "All")],
                   cross_dataset=[("accuracy", metric.upper())], domain_generalization=[("accuracy", metric.upper())],
                   few_shot=[("accuracy", metric.upper())])
    for protocol, title in saved_titles.items():
        TITLES[protocol] = f"{name} in place of accuracy. {title}"
    try:
        yield
    finally:
        METRICS.clear()
        METRICS.update(saved_metrics)
        TITLES.clear()
        TITLES.update(saved_titles)


def parse(root, protocol, seeds=(1, 2, 3), datasets=None, methods=None, shots=None, source="imagenet",
          allow_missing=False, decimals=2, runs=None, methods_as_rows=False, metric="accuracy"):
    """(markdown, csv rows, tables) of one protocol; metric: accuracy, or ece / nll (calibration_tables)."""
    runs = discover(root) if runs is None else runs
    if metric != "accuracy":
        runs = calibration_runs(runs, metric)
    with calibration_tables(metric) if metric != "accuracy" else contextlib.nullcontext():
        rec = records_for(protocol, runs, source)
        tables = build(protocol, rec, list(seeds), datasets, methods, shots)
        markdown = render(protocol, tables, rec, list(seeds), allow_missing, decimals, methods_as_rows)
        rows = csv_rows(protocol, tables, rec, list(seeds))
    if metric != "accuracy":
        for row in rows:
            row["metric"] = f"{row['metric']}_{metric}"
    return markdown, rows, tables


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="See docs/protocols.md for the folders and the tables.")
    p.add_argument("root", help="the output root of the scripts (their $OUTPUT)")
    p.add_argument("--protocol", choices=PROTOCOLS, nargs="+",
                   help="tables to make (default: every protocol with results under root)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the seeds every cell needs (1 2 3)")
    p.add_argument("--datasets", nargs="+", help="rows (default: the datasets found); a dataset without results "
                                                 "is then listed as missing")
    p.add_argument("--methods", nargs="+", help="only these trainers (or TRAINER/CFG)")
    p.add_argument("--shots", type=int, nargs="+", help="only these numbers of shots")
    p.add_argument("--source", default="imagenet", help="the training dataset of cross-dataset / DG (imagenet)")
    p.add_argument("--allow-missing", action="store_true",
                   help="average the seeds that exist where some are missing (cells marked *)")
    p.add_argument("--decimals", type=int, default=2)
    p.add_argument("--methods-as-rows", action="store_true",
                   help="a method per row (compact for one or two datasets; the default is a dataset per row)")
    p.add_argument("--csv", help="CSV file (default: ROOT/results_<protocol>.csv); with several protocols, "
                                 "<protocol> in the name is replaced")
    p.add_argument("--markdown", help="Markdown file (default: ROOT/results_<protocol>.md)")
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    p.add_argument("--metric", choices=["accuracy", *CALIBRATION], default="accuracy",
                   help="tabulate calibration instead of accuracy: ece (%%, 15 bins) or nll; base2new/open_world "
                        "give each half's value (default files: results_<protocol>_<metric>.*)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    runs = discover(args.root)
    protocols = args.protocol
    if not protocols:
        protocols = [pr for pr in PROTOCOLS if records_for(pr, runs, args.source).values]
        if not protocols:
            print(f"No results under {args.root} in the folders of scripts/*.sh (see docs/protocols.md).")
            return 1
    any_missing = False
    for protocol in protocols:
        markdown, rows, tables = parse(args.root, protocol, args.seeds, args.datasets, args.methods, args.shots,
                                       args.source, args.allow_missing, args.decimals, runs=runs,
                                       methods_as_rows=args.methods_as_rows, metric=args.metric)
        any_missing |= any(t["missing"] for t in tables)
        print(markdown)
        if args.no_write:
            continue
        stem = "results_<protocol>" + ("" if args.metric == "accuracy" else f"_{args.metric}")
        md_path = (args.markdown or os.path.join(args.root, stem + ".md")).replace("<protocol>", protocol)
        csv_path = (args.csv or os.path.join(args.root, stem + ".csv")).replace("<protocol>", protocol)
        if len(protocols) > 1 and args.csv and "<protocol>" not in args.csv:
            root, ext = os.path.splitext(args.csv)
            csv_path = f"{root}_{protocol}{ext}"
        if len(protocols) > 1 and args.markdown and "<protocol>" not in args.markdown:
            root, ext = os.path.splitext(args.markdown)
            md_path = f"{root}_{protocol}{ext}"
        for path in (md_path, csv_path):
            if os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(md_path, "w") as f:
            f.write(markdown + "\n")
        with open(csv_path, "w", newline="") as f:
            fields = ["protocol", "shots", "method", "dataset", "metric", "mean", "std", "n_seeds", "seeds_expected",
                      "seeds_found", "complete", "values", "source"]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        print(f"(written: {md_path}, {csv_path})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
