"""Fixed text targets that objectives pull the prompted features towards, made once with the frozen text tower:
class descriptions (HiCroPL, CoPrompt; one loader for both) or template sets (PromptSRC), cached on disk.

Descriptions: a JSON file {"class name": ["sentence", ...]} (class names with spaces, as the official
gpt_file/<name>_prompt.json files), or a folder of such files named as the official gpt_file/.
"""
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn

from vlprompt.clip.text_prompt import clean_classname
from vlprompt.engine.checkpoint import _atomic_torch_save

# DATASET.NAME -> the file name stem of the official gpt_file/<stem>_prompt.json
DESCRIPTION_FILE_STEMS = {
    "Caltech101": "caltech",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "FGVCAircraft": "fgvc",
    "Food101": "food101",
    "ImageNet": "imagenet",
    "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
    "ImageNetSketch": "imagenet_sketch",
    "ImageNetV2": "imagenetv2",
    "OxfordFlowers": "oxford_flowers",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "SUN397": "sun397",
    "UCF101": "ucf101",
}
OFFICIAL_DESCRIPTIONS_DIR = "gpt_file"  # where the official code reads them, relative to the working folder


def find_descriptions(setting: str, dataset_name: str, key: str = "TRAINER.HICROPL.DESCRIPTIONS"):
    """The descriptions file for a dataset, or None for the template fallback; a wrong setting is an error.
    `key`: the config key that gave `setting`, named in the errors."""
    stem = DESCRIPTION_FILE_STEMS.get(dataset_name, dataset_name.lower())
    if not setting:
        official = Path(OFFICIAL_DESCRIPTIONS_DIR) / f"{stem}_prompt.json"
        return official if official.is_file() else None
    path = Path(setting).expanduser()
    if path.is_dir():
        path = path / f"{stem}_prompt.json"
        if not path.is_file():
            raise FileNotFoundError(f"{key}: the folder {setting} has no {path.name} for {dataset_name}; add it, "
                                    "point the key at a JSON file, or set it to \"\" to use CLIP's template ensemble")
    elif not path.is_file():
        raise FileNotFoundError(f"{key}: {setting} does not exist (expected a JSON file "
                                '{"class name": ["sentence", ...]} or a folder of <dataset>_prompt.json files)')
    return path


def class_sentences(classnames, descriptions_file, key: str = "TRAINER.HICROPL.DESCRIPTIONS",
                    equal_counts: bool = False):
    """Per class, its descriptions, or CLIP's 80 ImageNet templates filled with its name when there is no file.
    equal_counts: every class must have as many sentences as the first (CoPrompt indexes them together)."""
    names = [clean_classname(c) for c in classnames]
    if descriptions_file is None:
        return [[template(name) for template in OPENAI_IMAGENET_TEMPLATES] for name in names]
    try:
        with open(descriptions_file) as f:
            descriptions = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{key}: {descriptions_file} is not valid JSON ({e})") from e
    if not isinstance(descriptions, dict):
        raise ValueError(f"{key}: {descriptions_file} must hold an object {{\"class name\": [\"sentence\", ...]}}")
    missing = [n for n in names if not descriptions.get(n)]
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{key}: {descriptions_file} has no sentences for {shown}; its keys must be the class names "
                         "(underscores as spaces)")
    sentences = [[descriptions[n]] if isinstance(descriptions[n], str) else list(descriptions[n]) for n in names]
    if equal_counts:
        usual = Counter(len(s) for s in sentences).most_common(1)[0][0]
        for name, per_class in zip(names, sentences):
            if len(per_class) != usual:
                example = names[[len(s) for s in sentences].index(usual)]
                raise ValueError(f"{key}: {descriptions_file} has {len(per_class)} sentences for '{name}' but "
                                 f"{usual} for most classes (e.g. '{example}'); every class needs the same number")
    return sentences


def load_class_sentences(setting, dataset_name, classnames, key, owner, equal_counts=False):
    """find_descriptions() + class_sentences(), with the log line saying which source is used."""
    path = find_descriptions(setting, dataset_name, key)
    if path is None:
        print(f"{owner}: no class descriptions ({key}); the text targets are CLIP's 80 ImageNet templates")
    else:
        print(f"{owner}: text targets from the class descriptions in {path}")
    return class_sentences(classnames, path, key, equal_counts)


def encode_sentences(text_encoder, tokenizer, sentences_per_class, chunk: int = 1000):
    """Raw frozen text features of every sentence, per class: a list of [S_c, d] tensors (fp32)."""
    flat = [s for sentences in sentences_per_class for s in sentences]
    with torch.no_grad():
        feats = torch.cat([text_encoder.encode_tokens(tokenizer(flat[i:i + chunk])).float()
                           for i in range(0, len(flat), chunk)])
    return list(feats.split([len(s) for s in sentences_per_class]))


def cache_dir() -> Path:
    return Path(os.environ.get("VLPROMPT_CACHE", "~/.cache/vlprompt")).expanduser()


def _fingerprint(module: nn.Module) -> str:
    """A digest of a module's weights, so a cache made with other weights is never used."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def cached_text_targets(kind, dataset_name, text_encoder, spec, compute, label):
    """compute() once per (text-tower weights, spec), kept under $VLPROMPT_CACHE/<kind>/ (atomic writes).
    spec: a JSON-serialisable description of everything else the result depends on (classes, sentences)."""
    key = json.dumps({"weights": _fingerprint(text_encoder), **spec})
    path = cache_dir() / kind / f"{dataset_name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
    if path.is_file():
        print(f"{label} from the cache {path}")
        return torch.load(path, map_location="cpu")
    result = compute().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(result, str(path))
    return result
