"""Config defaults, the official yamls, and the merge error messages."""
from pathlib import Path

import pytest
import yaml
from yacs.config import CfgNode as CN

import vlprompt.config.defaults as defaults
from vlprompt.config import (
    ConfigError, ConfigTypeError, full_keys, get_cfg_default, merge_from_file, merge_from_list,
    register_config_extension,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASET_YAMLS = sorted((CONFIGS / "datasets").glob("*.yaml"))
TRAINER_YAMLS = sorted((CONFIGS / "trainers").glob("*/*.yaml"))
# Top-level nodes that belong to one trainer's extension, besides TRAINER.<NAME> (BMIP's train.py adds SHARE)
TRAINER_OWNED_NODES = {"SHARE"}


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def trainer_owned_prefixes(flat_keys):
    """'TRAINER.<NAME>' for trainer nodes that Dassl's base defaults do not have, plus TRAINER_OWNED_NODES."""
    owned = set()
    for key in flat_keys:
        parts = key.split(".")
        if parts[0] == "TRAINER" and len(parts) > 2 and parts[1] not in defaults._C.TRAINER:
            owned.add(f"TRAINER.{parts[1]}")
        elif parts[0] in TRAINER_OWNED_NODES:
            owned.add(parts[0])
    return owned


def test_official_config_files_present():
    official = {"caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet", "imagenet_a", "imagenet_r",
                "imagenet_sketch", "imagenetv2", "oxford_flowers", "oxford_pets", "stanford_cars", "sun397", "ucf101",
                "synthetic"}
    assert official <= {p.stem for p in DATASET_YAMLS}
    names = {f"{p.parent.name}/{p.name}" for p in TRAINER_YAMLS}
    for required in ["CoOp/vit_b16_ep50.yaml", "CoOp/vit_b16_ep100.yaml", "CoOp/vit_b16_ep50_ctxv1.yaml",
                     "CoOp/rn50.yaml", "CoOp/vit_b32_ep50.yaml", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
                     "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", "BMIP/BMIP_ctx2_dp9_lr2.yaml",
                     "HiCroPL/vit_b16_c2_ep50_batch32_16ctx.yaml"]:
        assert required in names


def test_defaults_keep_dassl_values_and_add_vlprompt_keys():
    cfg = get_cfg_default()
    assert not cfg.is_frozen()
    assert cfg.SEED == -1 and cfg.USE_CUDA is True and cfg.OUTPUT_DIR == "./output"
    assert cfg.OPTIM.STEPSIZE == (-1,) and cfg.OPTIM.WARMUP_EPOCH == -1 and cfg.OPTIM.LR_SCHEDULER == "single_step"
    assert cfg.DATALOADER.TRAIN_U.SAME_AS_X is True and cfg.DATALOADER.TEST.SAMPLER == "SequentialSampler"
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TRAINER.FIXMATCH.CONF_THRE == 0.95
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    assert cfg.MODEL.BACKBONE.PATH == "" and cfg.MODEL.INIT_SEED == -1 and cfg.OPTIM.EPS == 1e-8
    assert cfg.DEVICE == "auto" and cfg.TEST.SAVE_LOGITS is False and cfg.DATALOADER.SKIP_BROKEN_IMAGES is False
    assert cfg.TRAIN.EARLY_STOPPING is False and cfg.TRAIN.PATIENT_COUNT == 0


def test_get_cfg_default_returns_independent_copies():
    a = get_cfg_default()
    a.OPTIM.LR = 123.0
    assert get_cfg_default().OPTIM.LR == 0.0003


def test_registered_extension_is_applied(monkeypatch):
    get_cfg_default()  # import the real trainers first, so they register into the real list
    monkeypatch.setattr(defaults, "_CONFIG_EXTENSIONS", list(defaults._CONFIG_EXTENSIONS))

    @register_config_extension
    def add_fake(cfg):
        cfg.TRAINER.FAKE = CN()
        cfg.TRAINER.FAKE.N_CTX = 16

    register_config_extension(add_fake)  # registering again (a reload) replaces, not duplicates
    assert defaults._CONFIG_EXTENSIONS.count(add_fake) == 1
    assert get_cfg_default().TRAINER.FAKE.N_CTX == 16


@pytest.mark.parametrize("path", DATASET_YAMLS, ids=lambda p: p.name)
def test_dataset_yaml_merges(path):
    cfg = get_cfg_default()
    merge_from_file(cfg, path)
    assert cfg.DATASET.NAME == yaml.safe_load(path.read_text())["DATASET"]["NAME"]


@pytest.mark.parametrize("path", TRAINER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_trainer_yaml_non_trainer_keys_exist_and_file_merges(path):
    flat = flatten(yaml.safe_load(path.read_text()))
    owned = trainer_owned_prefixes(flat)
    base_keys = set(full_keys(defaults._C))
    for key in flat:
        if not any(key == p or key.startswith(p + ".") for p in owned):
            assert key in base_keys, f"{path}: {key} is not a default key"

    cfg = get_cfg_default()
    for prefix in sorted(owned):
        node = cfg
        for part in prefix.split("."):
            if part not in node:
                pytest.skip(f"{prefix} is not registered yet (its trainer's config extension is missing)")
            node = node[part]
    merge_from_file(cfg, CONFIGS / "datasets" / "oxford_pets.yaml")
    merge_from_file(cfg, path)
    for key, value in flat.items():
        merged = cfg
        for part in key.split("."):
            merged = merged[part]
        expected = CN._decode_cfg_value(value)  # yacs turns "(224, 224)" and "1e-5" into Python values
        assert merged == (tuple(expected) if isinstance(merged, tuple) else expected), key


def test_coop_yaml_values_decoded_like_yacs():
    cfg = get_cfg_default()
    merge_from_file(cfg, CONFIGS / "trainers" / "CoOp" / "vit_b16_ep50.yaml")
    assert cfg.INPUT.SIZE == (224, 224) and cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and cfg.OPTIM.MAX_EPOCH == 50
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16" and cfg.OPTIM.NAME == "sgd"


def write(tmp_path, text):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_file_and_nearest(tmp_path):
    cfg = get_cfg_default()
    cfg.TRAINER.FAKE = CN()
    cfg.TRAINER.FAKE.N_CTX = 16
    path = write(tmp_path, "TRAINER:\n  FAKE:\n    N_CTXX: 4\n")
    with pytest.raises(ConfigError) as info:
        merge_from_file(cfg, path)
    msg = str(info.value)
    assert "Unknown config key 'TRAINER.FAKE.N_CTXX'" in msg and str(path) in msg
    assert "Nearest valid keys: TRAINER.FAKE.N_CTX" in msg
    assert isinstance(info.value, KeyError)


def test_unregistered_trainer_node_is_named(tmp_path):
    path = write(tmp_path, "TRAINER:\n  NOPE:\n    N_CTX: 4\n")
    with pytest.raises(ConfigError, match=r"TRAINER\.NOPE is added by its trainer's config extension"):
        merge_from_file(get_cfg_default(), path)


def test_failed_merge_leaves_cfg_unchanged(tmp_path):
    cfg = get_cfg_default()
    path = write(tmp_path, "OPTIM:\n  LR: 0.5\n  LRR: 1.0\n")
    with pytest.raises(ConfigError, match="OPTIM.LRR.*Nearest valid keys: OPTIM.LR"):
        merge_from_file(cfg, path)
    assert cfg.OPTIM.LR == 0.0003


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        merge_from_file(get_cfg_default(), missing)


def test_type_mismatch_message(tmp_path):
    path = write(tmp_path, "OPTIM:\n  MAX_EPOCH: 5.5\n")
    with pytest.raises(ConfigTypeError) as info:
        merge_from_file(get_cfg_default(), path)
    msg = str(info.value)
    assert "OPTIM.MAX_EPOCH" in msg and "expects int" in msg and "5.5" in msg and str(path) in msg
    with pytest.raises(ValueError, match=r"'OPTIM.LR'.*expects float.*got str 'fast'"):
        merge_from_list(get_cfg_default(), ["OPTIM.LR", "fast"])


def test_merge_from_list():
    cfg = get_cfg_default()
    merge_from_list(cfg, ["OPTIM.LR", "0.01", "INPUT.SIZE", "(32, 32)", "OPTIM.STEPSIZE", "[5, 8]", "DATASET.NAME", "X"])
    assert cfg.OPTIM.LR == 0.01 and cfg.INPUT.SIZE == (32, 32) and cfg.OPTIM.STEPSIZE == (5, 8)
    assert cfg.DATASET.NAME == "X"
    merge_from_list(cfg, [])
    merge_from_list(cfg, None)


def test_merge_from_list_errors():
    cfg = get_cfg_default()
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        merge_from_list(cfg, ["OPTIM.LR", "0.1", "OPTIM.NAME"])
    with pytest.raises(ConfigError, match="'DATALOADER.NUM_WORKER'.*Nearest valid keys: DATALOADER.NUM_WORKERS"):
        merge_from_list(cfg, ["DATALOADER.NUM_WORKER", "2"])
    with pytest.raises(ConfigError, match="OPTIM.LR.X"):
        merge_from_list(cfg, ["OPTIM.LR.X", "2"])
