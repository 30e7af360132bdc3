"""vlprompt: prompt learning on frozen CLIP models (CoOp, CoCoOp, MaPLe, BMIP, HiCroPL, ...)."""

__version__ = "0.1.0"
