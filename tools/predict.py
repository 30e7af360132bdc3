"""Classify images with a trained model: `python tools/predict.py --model-dir RUN --images PATH ...` (also installed
as vlprompt-predict; see vlprompt/predict.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from vlprompt.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
