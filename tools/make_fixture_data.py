"""Write miniature copies of the benchmark layouts: `python tools/make_fixture_data.py --root DIR [--dataset NAME ...]`.

Each dataset gets its real folders, split file and side files (JSON, .mat, .txt) with a few classes of
8x8 images, so every reader, tools/check_data.py and a CoOp run can be tried without downloads. An
existing dataset folder is never written into.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from vlprompt.datasets.check import resolve  # noqa: E402
from vlprompt.datasets.fixtures import write_fixture_data  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="folder to write the dataset folders into")
    p.add_argument("--dataset", nargs="+", action="extend", default=[], help="datasets (default: all 15)")
    args = p.parse_args(argv)
    try:
        written = write_fixture_data(args.root, [resolve(n) for n in args.dataset])
    except (KeyError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, folder in written.items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
