"""Load a frozen CLIP through open_clip: official backbone names, local weight files, offline caches."""
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


def _register_configs():
    global _registered
    if not _registered:
        for path in sorted(_CONFIG_DIR.glob("*.json")):
            open_clip.add_model_config(path)
        _registered = True


def resolve_architecture(name: str) -> str:
    """Official name ('ViT-B/16') or open_clip architecture ('ViT-B-16') -> open_clip architecture."""
    _register_configs()
    arch = OFFICIAL_NAMES.get(name, name)
    if arch not in open_clip.list_models():
        raise ValueError(
            f"Unknown CLIP backbone '{name}'. Use an official name ({', '.join(OFFICIAL_NAMES)}), "
            f"'vlprompt-tiny', or an open_clip architecture (open_clip.list_models())."
        )
    return arch


def _openai_url(arch: str):
    base = arch.replace("-quickgelu", "")
    cfg = open_clip.get_pretrained_cfg(base, "openai")
    return base, cfg


def cached_weight_candidates(name: str) -> list:
    """Local files that may hold the pretrained weights of `name`, in the order they are tried."""
    arch = resolve_architecture(name)
    base, cfg = _openai_url(arch)
    if not cfg:
        return []
    candidates = []
    if cfg.get("url"):
        # Where the official repos (OpenAI's clip package) and open_clip cache OpenAI's files.
        candidates.append(Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"]))
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache

            repo = cfg["hf_hub"].rstrip("/")
            for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
                hit = try_to_load_from_cache(repo, fname)
                candidates.append(Path(hit) if isinstance(hit, str) else Path(f"<HF cache>/{repo}/{fname}"))
        except ImportError:
            pass
    return candidates


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


def _missing_weights_error(name: str, tried: list) -> FileNotFoundError:
    arch = resolve_architecture(name)
    base, cfg = _openai_url(arch)
    url = (cfg or {}).get("url", "")
    lines = [f"No weights found for CLIP backbone '{name}' (no network is used to fetch them). Tried:"]
    lines += [f"  - {p}" for p in tried] or ["  - (no known cache location for this backbone)"]
    lines.append("Fix one of:")
    lines.append("  - set MODEL.BACKBONE.PATH to a local weights file (OpenAI .pt, state dict or open_clip checkpoint);")
    if url:
        lines.append(f"  - download {url} to ~/.cache/clip/ on a machine with internet and copy it here;")
        lines.append(f"  - or run python -c \"import open_clip; open_clip.create_model('{base}', pretrained='openai')\" "
                     "with internet to fill the Hugging Face cache;")
    lines.append("  - or use MODEL.BACKBONE.NAME vlprompt-tiny (random weights) to test the pipeline.")
    return FileNotFoundError("\n".join(lines))


def load_clip(name: str, path: str = "", device="cpu", random_weights: bool = False) -> torch.nn.Module:
    """Build `name`'s architecture in fp32 and load its weights; the model comes back frozen and in eval mode.

    Weights come from `path` if given, else from the local caches of OpenAI/open_clip files, or for 'vlprompt-toy'
    from toy_checkpoint_path(). Other architectures named 'vlprompt-*' have no pretrained weights: without `path`
    they get a fixed-seed random init, so two processes build the same model (a checkpoint trained on one
    evaluates identically in another). random_weights does the same for any architecture (benchmarks).
    """
    arch = resolve_architecture(name)
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"MODEL.BACKBONE.PATH '{path}' does not exist or is not a file")
        weights = path
    elif arch == TOY_NAME and not random_weights:
        weights = toy_checkpoint_path()
        if not weights.is_file():
            raise FileNotFoundError(
                f"No pretrained toy CLIP at {weights}. Run `python tools/pretrain_toyclip.py` (about 3 minutes "
                f"on a CPU; `make demo` does it too), or set MODEL.BACKBONE.PATH or $VLPROMPT_TOY_CLIP to a "
                f"checkpoint it wrote.")
    elif random_weights or arch.startswith(RANDOM_INIT_PREFIX):
        weights = None
    else:
        tried = cached_weight_candidates(name)
        weights = next((p for p in tried if p.is_file()), None)
        if weights is None:
            raise _missing_weights_error(name, tried)

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


def get_tokenizer(name: str):
    """open_clip's tokenizer for the backbone (CLIP's BPE, 77 positions for every OpenAI model)."""
    return open_clip.get_tokenizer(resolve_architecture(name))
