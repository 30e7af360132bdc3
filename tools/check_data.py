"""Which datasets under --root are complete: `python tools/check_data.py --root DATA [--dataset NAME ...]`.

For each dataset: found / MISSING, every missing folder, file or split file, the images a split lists
that are not on disk (count and first examples), and where to get each piece. Exit status 1 if any
dataset is incomplete. A training run stops with the same message before building any model.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from vlprompt.datasets.check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
