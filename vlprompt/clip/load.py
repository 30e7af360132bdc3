"""Load a frozen CLIP through open_clip: official backbone names, open_clip tags and hf-hub names, local weight files
and caches, and weights fetched through open_clip's pretrained table when no local file holds them."""
import json
import os
import zipfile
from pathlib import Path

import open_clip
import torch

_CONFIG_DIR = Path(__file__).parent / "model_configs"

# Official (OpenAI clip package) backbone names -> open_clip architecture. OpenAI weights use QuickGELU.
OFFICIAL_NAMES = {
    "RN50": "RN50-quickgelu",
    "RN101": "RN101-quickgelu",
    "RN50x4": "RN50x4-quickgelu",
    "RN50x16": "RN50x16-quickgelu",
    "RN50x64": "RN50x64-quickgelu",
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
}
# Architectures shipped with vlprompt: random init (fixed seed) unless MODEL.BACKBONE.PATH gives weights.
RANDOM_INIT_PREFIX = "vlprompt-"
RANDOM_INIT_SEED = 0
# ...except the toy CLIP, pretrained by tools/pretrain_toyclip.py (docs/toyworld.md); its weights are read from
# $VLPROMPT_TOY_CLIP, else from output/toyclip/ in the repository.
TOY_NAME = "vlprompt-toy"


def toy_checkpoint_path() -> Path:
    """Where load_clip('vlprompt-toy') looks for the pretrained toy CLIP."""
    env = os.environ.get("VLPROMPT_TOY_CLIP")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "output" / "toyclip" / f"{TOY_NAME}.pt"

_registered = False

HF_HUB_PREFIX = "hf-hub:"
# Where the official repos (OpenAI's clip package) cache OpenAI's files, and where open_clip fetches URLs to.
OPENAI_CACHE = "~/.cache/clip"
# Either variable set to 1/true/yes/on: never fetch weights, only read local files (an error lists the paths tried).
OFFLINE_VARIABLES = ("VLPROMPT_OFFLINE", "HF_HUB_OFFLINE")
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


def _register_configs():
    global _registered
    if not _registered:
        for path in sorted(_CONFIG_DIR.glob("*.json")):
            open_clip.add_model_config(path)
        _registered = True


def _cache_root() -> Path:
    return Path(os.environ.get("VLPROMPT_CACHE", "~/.cache/vlprompt")).expanduser()


def _hf_cached(repo: str, filename: str):
    """The file's path in the Hugging Face cache, or None (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(repo, filename)
    return Path(hit) if isinstance(hit, str) else None


def _hf_hub_architecture(name: str) -> str:
    """Register the open_clip config of an 'hf-hub:org/repo' model (from the Hugging Face cache, fetched through
    open_clip when online) under a local architecture name, and return that name."""
    repo = name[len(HF_HUB_PREFIX):].strip("/")
    if not repo or "/" not in repo:
        raise ValueError(f"'{name}' is not a Hugging Face model name; expected hf-hub:<org>/<repo>")
    arch = "hf-hub-" + repo.replace("/", "--")
    if arch in open_clip.list_models():
        return arch
    config_file = _hf_cached(repo, "open_clip_config.json")
    if config_file is None:
        if offline():
            raise FileNotFoundError(
                f"No open_clip_config.json for {name} in the Hugging Face cache, and fetching is off "
                f"({' / '.join(OFFLINE_VARIABLES)} is set). Unset it on a machine with internet once, or copy the "
                f"cache folder models--{repo.replace('/', '--')} into $HF_HUB_CACHE.")
        from open_clip.pretrained import download_pretrained_from_hf

        config_file = Path(download_pretrained_from_hf(repo, filename="open_clip_config.json"))
    config = json.loads(Path(config_file).read_text())
    model_cfg = config.get("model_cfg", config)
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"{config_file} holds no open_clip model config (embed_dim, vision_cfg, text_cfg)")
    # open_clip learns architectures from JSON files: one file per hub model, named as the architecture
    folder = _cache_root() / "open_clip_configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{arch}.json"
    tmp = folder / f".{arch}.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(model_cfg, indent=2))
    os.replace(tmp, path)
    open_clip.add_model_config(path)
    return arch


def resolve_architecture(name: str) -> str:
    """Official name ('ViT-B/16'), open_clip architecture ('ViT-B-16') or 'hf-hub:org/repo' -> open_clip
    architecture."""
    _register_configs()
    if name.startswith(HF_HUB_PREFIX):
        return _hf_hub_architecture(name)
    arch = OFFICIAL_NAMES.get(name, name)
    if arch not in open_clip.list_models():
        raise ValueError(
            f"Unknown CLIP backbone '{name}'. Use an official name ({', '.join(OFFICIAL_NAMES)}), "
            f"'vlprompt-tiny', an open_clip architecture (open_clip.list_models()) with MODEL.BACKBONE.PRETRAINED "
            f"<tag> (open_clip.list_pretrained_tags_by_model(arch)), or hf-hub:<org>/<repo>."
        )
    return arch


def _quickgelu_variant(arch: str, quick_gelu: bool) -> str:
    """The architecture whose activation matches the weights: OpenAI's are trained with QuickGELU, most others
    with GELU; open_clip names the two variants 'X' and 'X-quickgelu'."""
    base = arch[:-len("-quickgelu")] if arch.endswith("-quickgelu") else arch
    wanted = f"{base}-quickgelu" if quick_gelu else base
    return wanted if wanted in open_clip.list_models() else arch


def resolve_pretrained(name: str, pretrained="") -> tuple:
    """(architecture, tag, open_clip's pretrained entry or None) for MODEL.BACKBONE.NAME / PRETRAINED.

    pretrained "" (or Dassl's boolean): OpenAI's weights where open_clip lists them (the official names), none
    for vlprompt's own architectures; a tag ('laion2b_s34b_b88k') picks another entry of open_clip's table.
    'hf-hub:' names carry their weights; the tag is ignored."""
    arch = resolve_architecture(name)
    if isinstance(pretrained, bool) or pretrained is None:  # Dassl's MODEL.BACKBONE.PRETRAINED True/False
        pretrained = ""
    pretrained = str(pretrained).strip()
    if name.startswith(HF_HUB_PREFIX):
        repo = name[len(HF_HUB_PREFIX):].strip("/")
        return arch, "", {"hf_hub": repo + "/"}
    base = arch[:-len("-quickgelu")] if arch.endswith("-quickgelu") else arch
    if not pretrained:
        if arch.startswith(RANDOM_INIT_PREFIX):
            return arch, "", None
        pretrained = "openai"
        cfg = open_clip.get_pretrained_cfg(arch, "openai") or open_clip.get_pretrained_cfg(base, "openai")
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(base)
            raise ValueError(f"CLIP backbone '{name}' has no OpenAI weights in open_clip; set "
                             f"MODEL.BACKBONE.PRETRAINED to one of its tags: {', '.join(tags) or '(none listed)'}, "
                             f"or MODEL.BACKBONE.PATH to a weights file")
    else:
        cfg = open_clip.get_pretrained_cfg(arch, pretrained) or open_clip.get_pretrained_cfg(base, pretrained)
        if not cfg:
            tags = sorted(set(open_clip.list_pretrained_tags_by_model(arch))
                          | set(open_clip.list_pretrained_tags_by_model(base)))
            raise ValueError(f"MODEL.BACKBONE.PRETRAINED '{pretrained}' is not an open_clip tag of {arch}; its tags: "
                             f"{', '.join(tags) or '(none)'}")
    return _quickgelu_variant(arch, bool(cfg.get("quick_gelu", False))), pretrained, dict(cfg)


def _hf_entry(cfg: dict):
    """(repo, filenames to look for) of a pretrained entry's 'org/repo/' or 'org/repo/file' hub field."""
    repo, filename = os.path.split(cfg["hf_hub"])
    if not filename:
        return repo, list(HF_WEIGHT_FILES)
    names = [filename]
    if filename.endswith((".bin", ".pth")):  # open_clip prefers a safetensors twin
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def weight_candidates(name: str, pretrained="") -> list:
    """Local files that may hold the pretrained weights of `name` (and tag), in the order they are tried."""
    _, _, cfg = resolve_pretrained(name, pretrained)
    if not cfg:
        return []
    candidates = []
    if cfg.get("file"):
        candidates.append(Path(cfg["file"]).expanduser())
    if cfg.get("url"):
        candidates.append(Path(OPENAI_CACHE).expanduser() / os.path.basename(cfg["url"]))
    if cfg.get("hf_hub"):
        repo, filenames = _hf_entry(cfg)
        for fname in filenames:
            candidates.append(_hf_cached(repo, fname) or Path(f"<HF cache>/{repo}/{fname}"))
    return candidates


cached_weight_candidates = weight_candidates  # the earlier name


def fetch_weights(name: str, pretrained="") -> Path:
    """Download the weights through open_clip's pretrained machinery, as the official clip.load does: OpenAI's
    URLs into ~/.cache/clip (SHA256 checked, progress bar), Hugging Face entries into the Hugging Face cache.
    Concurrent processes (torchrun) take a file lock, so one downloads and the others read its file."""
    from filelock import FileLock
    from open_clip import pretrained as oc_pretrained

    _, tag, cfg = resolve_pretrained(name, pretrained)
    print(f"Fetching the weights of CLIP backbone '{name}'" + (f" ({tag})" if tag else "")
          + f" from {cfg.get('url') or 'hf-hub:' + cfg['hf_hub']}")
    if cfg.get("url"):
        cache = Path(OPENAI_CACHE).expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache / (os.path.basename(cfg["url"]) + ".lock"))):
            return Path(oc_pretrained.download_pretrained_from_url(cfg["url"], cache_dir=str(cache)))
    return Path(oc_pretrained.download_pretrained(cfg, prefer_hf_hub=True))


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def read_state_dict(path) -> dict:
    """Weights from an OpenAI JIT archive, an OpenAI state dict or an open_clip checkpoint."""
    path = Path(path)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(str(path))
    elif _is_torchscript_archive(path):
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not CLIP weights")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):  # JIT archive metadata
        sd.pop(key, None)
    return sd


def _missing_weights_error(name: str, pretrained, tried: list, fetch_error=None) -> FileNotFoundError:
    _, tag, cfg = resolve_pretrained(name, pretrained)
    url = (cfg or {}).get("url", "")
    why = (f"fetching them failed: {fetch_error}" if fetch_error is not None else
           f"fetching is off: {' / '.join(v for v in OFFLINE_VARIABLES if os.environ.get(v))} is set")
    lines = [f"No weights found for CLIP backbone '{name}'" + (f" ({tag})" if tag else "") + f" ({why}). Tried:"]
    lines += [f"  - {p}" for p in tried] or ["  - (no known cache location for this backbone)"]
    lines.append("Fix one of:")
    lines.append("  - set MODEL.BACKBONE.PATH to a local weights file (OpenAI .pt, state dict or open_clip checkpoint);")
    if url:
        lines.append(f"  - download {url} to {OPENAI_CACHE}/ on a machine with internet and copy it here;")
    if fetch_error is None:
        lines.append(f"  - or unset {' and '.join(OFFLINE_VARIABLES)} on a machine with internet: the weights are "
                     "then fetched as the official code does;")
    lines.append("  - or use MODEL.BACKBONE.NAME vlprompt-tiny (random weights) to test the pipeline.")
    return FileNotFoundError("\n".join(lines))


def load_clip(name: str, path: str = "", device="cpu", random_weights: bool = False,
              pretrained="") -> torch.nn.Module:
    """Build `name`'s architecture in fp32 and load its weights; the model comes back frozen and in eval mode.

    Weights come from `path` if given, else from the local caches of OpenAI / open_clip / Hugging Face files
    (`pretrained`: an open_clip tag, see resolve_pretrained), fetched through open_clip when none is there and
    fetching is not switched off (OFFLINE_VARIABLES); for 'vlprompt-toy' from toy_checkpoint_path(). Other
    architectures named 'vlprompt-*' have no pretrained weights: without `path` or a tag they get a fixed-seed
    random init, so two processes build the same model (a checkpoint trained on one evaluates identically in
    another). random_weights does the same for any architecture (benchmarks).
    """
    if path or random_weights:  # no tag to look up: the architecture is the one named
        arch, pretrained_cfg = resolve_architecture(name), None
    else:
        arch, _, pretrained_cfg = resolve_pretrained(name, pretrained)
    if arch != resolve_architecture(name):
        print(f"CLIP backbone {name}: its weights were trained with {'Quick' if 'quickgelu' in arch else ''}GELU; "
              f"building the architecture {arch}")
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"MODEL.BACKBONE.PATH '{path}' does not exist or is not a file")
        weights = path
    elif random_weights:
        weights = None
    elif arch == TOY_NAME and not pretrained_cfg:
        weights = toy_checkpoint_path()
        if not weights.is_file():
            raise FileNotFoundError(
                f"No pretrained toy CLIP at {weights}. Run `python tools/pretrain_toyclip.py` (about 3 minutes "
                f"on a CPU; `make demo` does it too), or set MODEL.BACKBONE.PATH or $VLPROMPT_TOY_CLIP to a "
                f"checkpoint it wrote.")
    elif not pretrained_cfg:
        weights = None  # vlprompt-* architectures: fixed-seed random init
    else:
        tried = weight_candidates(name, pretrained)
        weights = next((p for p in tried if p.is_file()), None)
        if weights is None:
            if offline():
                raise _missing_weights_error(name, pretrained, tried)
            try:
                weights = fetch_weights(name, pretrained)
            except Exception as e:  # network, checksum, missing hub file: the same advice as offline
                raise _missing_weights_error(name, pretrained, tried, fetch_error=e) from e

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(arch, pretrained=None, load_weights=False, device="cpu")
    if weights is not None:
        sd = read_state_dict(weights)
        if "positional_embedding" not in sd and "text.positional_embedding" in sd:
            raise ValueError(f"{weights} holds a CustomTextCLIP checkpoint; only standard CLIP models are supported")
        if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        own = model.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        wrong_shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                       for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"Weights in {weights} do not fit architecture '{arch}' (MODEL.BACKBONE.NAME {name}): "
                f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                f"{len(wrong_shape)} of another shape {wrong_shape[:3]}"
            )
        model.load_state_dict(sd)
    model = model.float().to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_backbone(backbone_cfg, device="cpu", random_weights: bool = False) -> torch.nn.Module:
    """load_clip for a config's MODEL.BACKBONE node (NAME, PATH, PRETRAINED)."""
    return load_clip(backbone_cfg.NAME, backbone_cfg.PATH, device=device, random_weights=random_weights,
                     pretrained=backbone_cfg.get("PRETRAINED", ""))


def get_tokenizer(name: str):
    """open_clip's tokenizer for the backbone (CLIP's BPE, 77 positions for every OpenAI model)."""
    return open_clip.get_tokenizer(resolve_architecture(name))
