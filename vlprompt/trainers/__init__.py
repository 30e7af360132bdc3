"""One file per method; importing this package registers every trainer and its config keys."""
from . import bmip, cocoop, coop, coprompt, hicropl, ivlp, maple, promptsrc, vpt, zsclip  # noqa: F401
from .base import CLIPPromptTrainer, PromptedCLIP  # noqa: F401
