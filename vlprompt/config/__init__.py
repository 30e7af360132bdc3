"""Config: Dassl-compatible yacs defaults and merges that name what went wrong."""
import difflib
import os

import yaml
from yacs.config import CfgNode, _check_and_coerce_cfg_value_type

from .defaults import get_cfg_default, register_config_extension

__all__ = [
    "CfgNode", "ConfigError", "ConfigTypeError", "get_cfg_default", "register_config_extension",
    "merge_from_file", "merge_from_list", "full_keys", "cfg_to_yaml",
]


class ConfigError(KeyError):
    """An unknown config key. A KeyError, like yacs's own, with a readable message."""

    def __str__(self):  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(ValueError):
    """A config value whose type does not match the default's (yacs raises ValueError too)."""


def full_keys(cfg, prefix=""):
    """Dotted names of every leaf of ``cfg``, e.g. ``OPTIM.LR``."""
    keys = []
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        keys.extend(full_keys(v, name + ".") if isinstance(v, CfgNode) else [name])
    return keys


def _unknown_key(cfg, full_key, source, is_group=False):
    where = f" in {source}" if source else ""
    msg = f"Unknown config key '{full_key}'{where}."
    parts = full_key.split(".")
    if parts[0] == "TRAINER" and (len(parts) > 2 or is_group) and parts[1] not in cfg.TRAINER:
        # The official yamls carry TRAINER.<NAME>.*; that node exists only once its trainer registers it
        close = difflib.get_close_matches(parts[1], list(cfg.TRAINER.keys()), n=3, cutoff=0.6)
        msg += (f" TRAINER.{parts[1]} is added by its trainer's config extension: is that trainer"
                f" implemented and imported by vlprompt.trainers?")
        close = [f"TRAINER.{name}" for name in close]
    else:
        close = difflib.get_close_matches(full_key, full_keys(cfg), n=3, cutoff=0.6)
    if close:
        msg += " Nearest valid keys: " + ", ".join(close)
    return ConfigError(msg)


def _check(cfg, node, key_list, value, source, allow_new):
    """Raise if ``value`` may not be merged at ``key_list`` of ``node``; mirrors yacs's merge rules."""
    full_key = ".".join(key_list)
    key = key_list[-1]
    if not isinstance(node, CfgNode) or key not in node:
        if isinstance(node, CfgNode) and allow_new and node.is_new_allowed():
            return
        raise _unknown_key(cfg, full_key, source, is_group=isinstance(value, dict))
    value = CfgNode._decode_cfg_value(value)
    original = node[key]
    if isinstance(value, CfgNode) and isinstance(original, CfgNode):
        for k, v in value.items():
            _check(cfg, original, key_list + [k], v, source, allow_new)
        return
    try:
        _check_and_coerce_cfg_value_type(value, original, key, full_key)
    except ValueError:
        where = f" in {source}" if source else ""
        if isinstance(original, CfgNode):
            expected = f"a group of keys ({full_key}.*)"
        else:
            expected = f"{type(original).__name__} (default {original!r})"
        raise ConfigTypeError(
            f"Config key '{full_key}'{where} expects {expected}, got {type(value).__name__} {value!r}"
        ) from None


def merge_from_file(cfg, path):
    """Merge a yaml file into ``cfg`` (yacs semantics); nothing is changed if any key is unknown or mistyped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file not found: {path}")
    with open(path) as f:
        loaded = yaml.safe_load(f) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"Config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
    other = CfgNode(loaded)
    for k, v in other.items():
        _check(cfg, cfg, [k], v, path, allow_new=True)
    cfg.merge_from_other_cfg(other)
    return cfg


def merge_from_list(cfg, opts):
    """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` (command-line opts) into ``cfg``; values are Python literals."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(
            f"Config overrides must come in KEY VALUE pairs; got {len(opts)} items: {opts}"
        )
    for full_key, value in zip(opts[0::2], opts[1::2]):
        parts = str(full_key).split(".")
        node = cfg
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, CfgNode) else None
        # yacs's merge_from_list never adds new keys, so neither does the check
        _check(cfg, node, parts, value, "command-line options", allow_new=False)
    cfg.merge_from_list(opts)
    return cfg


def cfg_to_yaml(cfg):
    """The config as yaml text (yacs's dump)."""
    return cfg.dump()
