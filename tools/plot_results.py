"""Per-dataset bars of HM (or accuracy) per method, mean over seeds with the std as error bars, to a PNG.

    python tools/plot_results.py OUTPUT_ROOT [--protocol open_world|base2new|cross_dataset|domain_generalization]
                                 [--metric hm|accuracy|base|new] [--out FILE.png] [--seeds 1 2 3] [--allow-missing]

The numbers are those of tools/parse_results.py (same folders, seeds and Average row). A cell that lacks a seed
gets no bar (and an "n/a" mark) unless --allow-missing. Needs matplotlib (pip install -e '.[plot]').
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from parse_results import parse  # noqa: E402

DEFAULT_METRIC = {"open_world": "hm", "base2new": "hm", "cross_dataset": "accuracy",
                  "domain_generalization": "accuracy"}
METRIC_NAMES = {"hm": "HM (%)", "accuracy": "accuracy (%)", "base": "base accuracy (%)", "new": "new accuracy (%)"}


def bar_data(table, metric, allow_missing):
    """(datasets, methods, means[method][dataset], stds[method][dataset]) with None where there is no bar."""
    datasets = list(table["rows"])
    methods = [c[0] for c in table["columns"]]
    means, stds = {}, {}
    for col in table["columns"]:
        means[col[0]], stds[col[0]] = [], []
        for d in datasets:
            cell = table["rows"][d][col].get(metric)
            vals = [cell.values[s] for s in cell.expected if s in cell.values] if cell else []
            if cell and vals and (cell.complete or allow_missing):
                means[col[0]].append(statistics.fmean(vals))
                stds[col[0]].append(statistics.pstdev(vals) if len(vals) > 1 else 0.0)
            else:
                means[col[0]].append(None)
                stds[col[0]].append(None)
    return datasets, methods, means, stds


def plot(table, metric, title, out, allow_missing=False):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: plotting needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')")
    datasets, methods, means, stds = bar_data(table, metric, allow_missing)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.45 * len(datasets) * max(1, len(methods))), 4.5))
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(datasets))]
        ok = [k for k, v in enumerate(means[m]) if v is not None]
        ax.bar([xs[k] for k in ok], [means[m][k] for k in ok], width, yerr=[stds[m][k] for k in ok], capsize=2,
               label=m)
        for k, v in enumerate(means[m]):
            if v is None:
                ax.text(xs[k], 0.5, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(datasets)))
    ax.set_xticklabels(datasets, rotation=30, ha="right")
    ax.set_ylabel(METRIC_NAMES.get(metric, metric))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--protocol", default="open_world", choices=list(DEFAULT_METRIC))
    p.add_argument("--metric", choices=list(METRIC_NAMES), help="default: hm (base2new, open_world), else accuracy")
    p.add_argument("--out", help="PNG file (default: ROOT/results_<protocol>_<metric>.png)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--datasets", nargs="+")
    p.add_argument("--methods", nargs="+")
    p.add_argument("--shots", type=int, nargs="+")
    p.add_argument("--allow-missing", action="store_true", help="bars from the seeds that exist")
    args = p.parse_args(argv)
    metric = args.metric or DEFAULT_METRIC[args.protocol]
    _, _, tables = parse(args.root, args.protocol, args.seeds, args.datasets, args.methods, args.shots,
                         allow_missing=args.allow_missing)
    tables = [t for t in tables if t["columns"]]
    if not tables:
        print(f"No {args.protocol} results under {args.root}", file=sys.stderr)
        return 1
    written = []
    for t in tables:
        suffix = f"_{t['setting']}shots" if len(tables) > 1 else ""
        out = args.out or os.path.join(args.root, f"results_{args.protocol}_{metric}.png")
        if suffix:
            root, ext = os.path.splitext(out)
            out = f"{root}{suffix}{ext}"
        seeds = " ".join(map(str, args.seeds))
        title = f"{args.protocol}: {METRIC_NAMES.get(metric, metric)}, mean ± std over seeds {seeds}"
        written.append(plot(t, metric, title, out, args.allow_missing))
        if t["missing"]:
            print(f"{len(t['missing'])} missing run(s): " + ", ".join(t["missing"][:10]) +
                  (" ..." if len(t["missing"]) > 10 else ""))
    for out in written:
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
