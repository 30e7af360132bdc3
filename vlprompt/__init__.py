"""vlprompt: prompt learning on frozen CLIP models (CoOp, CoCoOp, MaPLe, BMIP, HiCroPL, ...)."""

__version__ = "0.1.0"

__all__ = ["load_model", "__version__"]


def __getattr__(name):
    """vlprompt.load_model, imported on first use (setup.py reads this file for the version only)."""
    if name == "load_model":
        from .predict import load_model

        return load_model
    raise AttributeError(f"module 'vlprompt' has no attribute {name!r}")
