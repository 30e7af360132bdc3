"""Dassl-compatible entry point: `python tools/train.py --root DATA --trainer CoOp ...`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from vlprompt.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
