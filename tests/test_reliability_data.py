"""Hostile and clumsy input (README "Reliability"): paths that leave the dataset, malformed split files and
caches, truncated split files, changed configs on resume, invalid settings, damaged result files, bad script
arguments. Each refusal is checked by its message."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from vlprompt import cli
from vlprompt.config import get_cfg_default
from vlprompt.data.base import Datum, LabelError
from vlprompt.data.split_dataset import (
    DataFileError, PathOutsideDatasetError, load_fewshot_cache, path_inside, read_split, save_fewshot_cache,
)
from vlprompt.datasets import DATASET_REGISTRY
from vlprompt.datasets.check import main as check_main
from vlprompt.datasets.fixtures import write_fixture_data
from vlprompt.engine.trainer import TrainerBase

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml")
IVLP_CFG = os.path.join(REPO, "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml")


def argv(root, out, *extra, trainer="CoOp", config=COOP_CFG, epochs=1):
    return ["--root", str(root), "--seed", "1", "--trainer", trainer, "--dataset-config-file", DATASET_CFG,
            "--config-file", config, "--output-dir", str(out), *extra, "MODEL.BACKBONE.NAME", "vlprompt-tiny",
            "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", str(epochs),
            "DATALOADER.TRAIN_X.BATCH_SIZE", "8"]


@pytest.fixture(scope="module")
def pristine_root(tmp_path_factory):
    """The Synthetic dataset, written once by a first run."""
    root = tmp_path_factory.mktemp("data")
    assert cli.main(argv(root, tmp_path_factory.mktemp("first") / "run")) == 0
    return root


@pytest.fixture
def root(pristine_root, tmp_path):
    shutil.copytree(pristine_root, tmp_path / "data")
    return tmp_path / "data"


def split_file(root):
    return root / "synthetic" / "split_synthetic.json"


def edit_split(root, edit):
    split = json.loads(split_file(root).read_text())
    edit(split)
    split_file(root).write_text(json.dumps(split))
    shutil.rmtree(root / "synthetic" / "split_fewshot", ignore_errors=True)


# ---- paths ------------------------------------------------------------------------------------------------------


def test_path_inside_is_lexical():
    assert path_inside("/data/pets/images", "a/b.jpg") and path_inside("/data/pets/images", "a/../b.jpg")
    assert not path_inside("/data/pets/images", "../../../etc/passwd")
    assert not path_inside("/data/pets/images", "/etc/passwd")
    assert not path_inside("/data/pets/images", "/data/pets/images2/x.jpg")  # a sibling with a common prefix
    assert path_inside("/data/pets/images", "/data/pets/images/x.jpg")


@pytest.mark.parametrize("entry", ["../../../../../../etc/passwd", "/etc/passwd"])
def test_split_entry_leaving_the_image_folder_is_refused(root, tmp_path, capsys, entry):
    edit_split(root, lambda s: s["test"].__setitem__(3, [entry, 0, "red circle"]))
    assert cli.main(argv(root, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f'{split_file(root)}, "test" entry 3 (["{entry}"' in err
    assert f"leads outside the dataset's image folder {root / 'synthetic' / 'images'}" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_fewshot_cache_entries_outside_the_dataset_are_refused(tmp_path):
    dataset_dir = tmp_path / "pets"
    (dataset_dir / "images").mkdir(parents=True)
    (dataset_dir / "images" / "a.jpg").write_bytes(b"x")
    good = Datum(str(dataset_dir / "images" / "a.jpg"), 0, classname="a")
    cache = tmp_path / "shot_1-seed_1.pkl"
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    # an existing file elsewhere, and a path that climbs out of a folder named like the dataset's
    for evil in (str(outside), "/elsewhere/pets/../secret.txt"):  # re-rooted, the second climbs out of pets/
        save_fewshot_cache(str(cache), [good, Datum(evil, 0, classname="a")], [good])
        with pytest.raises(PathOutsideDatasetError, match=f'Few-shot cache {cache}, "train" entry 1 .*outside'):
            load_fewshot_cache(str(cache), str(dataset_dir), image_dir=str(dataset_dir / "images"))
    save_fewshot_cache(str(cache), [good, Datum(str(dataset_dir / "images" / "a.jpg"), -2, classname="a")], [good])
    with pytest.raises(DataFileError, match=r'"train" entry 1 .*label must be an integer >= 0'):
        load_fewshot_cache(str(cache), str(dataset_dir))
    # a cache recorded under another copy of the dataset is re-rooted, as before
    save_fewshot_cache(str(cache), [Datum("/elsewhere/pets/images/a.jpg", 0, classname="a")], [good])
    train, _ = load_fewshot_cache(str(cache), str(dataset_dir), image_dir=str(dataset_dir / "images"))
    assert train[0].impath == str(dataset_dir / "images" / "a.jpg")


# ---- split entries and labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["train"].__setitem__(0, ["red_circle/000.png", 0]), r'"train" entry 0 .*3 fields\), got 2'),
    (lambda s: s["val"].__setitem__(1, ["red_circle/000.png", "0", "red circle"]),
     r'"val" entry 1 .*label must be an integer >= 0, got \'0\''),
    (lambda s: s["train"].__setitem__(2, ["red_circle/000.png", -1, "red circle"]),
     r'"train" entry 2 .*label must be an integer >= 0, got -1'),
    (lambda s: s.__setitem__("train", [e for e in s["train"] if e[1] != 3]),
     r"training labels must be 0..9 without gaps, but no training image has label 3"),
    (lambda s: s["test"].append(["red_circle/000.png", 12, "ghost"]),
     r'"test" entry 40 .*has label 12, which no training image has'),
])
def test_malformed_split_entries_are_named(root, tmp_path, capsys, edit, message):
    edit_split(root, edit)
    with pytest.raises((DataFileError, LabelError), match=message):
        read_split(str(split_file(root)), str(root / "synthetic" / "images"))
    assert cli.main(argv(root, tmp_path / "out")) == 1
    assert str(split_file(root)) in capsys.readouterr().err


def test_check_data_reports_bad_entries_and_rebuilds_truncated_splits(tmp_path, capsys):
    write_fixture_data(str(tmp_path), names=["OxfordPets"])
    split = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    good = split.read_text()
    data = json.loads(good)
    data["test"][0][0] = "../../outside.jpg"
    split.write_text(json.dumps(data))
    assert check_main(["--root", str(tmp_path), "--dataset", "OxfordPets"]) == 1
    out = capsys.readouterr().out
    assert '"test" entry 0 (["../../outside.jpg"' in out and "leads outside" in out

    split.write_text(good[:len(good) // 2])  # a build killed while writing (before writes were atomic)
    assert check_main(["--root", str(tmp_path), "--dataset", "OxfordPets"]) == 0
    out = capsys.readouterr().out
    assert "is truncated or damaged" in out and "it will be built again from annotations/trainval.txt" in out
    assert "MISSING" not in out and "Google Drive" not in out
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)
    dataset = DATASET_REGISTRY.get("OxfordPets")(cfg)
    assert "building it again" in capsys.readouterr().out
    assert set(json.loads(split.read_text())) == {"train", "val", "test"}  # written again, complete
    assert len(dataset.test) == len(json.loads(good)["test"])
    assert not [f for f in os.listdir(split.parent) if ".tmp" in f]  # written through a temporary file


def test_fewer_images_than_shots_is_a_warning_and_recorded(root, tmp_path, capsys):
    assert cli.main(argv(root, tmp_path / "out") + ["DATASET.NUM_SHOTS", "8"]) == 0
    out = capsys.readouterr().out
    assert "Warning: 8-shot sampling: 10 class(es) have fewer images, all of which are used" in out
    assert "0 (red circle): 6" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_shots"] == 8 and metrics["shots_used"] == {"min": 6, "max": 6}


# ---- settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, trainer, config, message", [
    (["OPTIM.MAX_EPOCH", "0"], "CoOp", COOP_CFG, "OPTIM.MAX_EPOCH is 0: a training run needs at least 1 epoch"),
    (["TRAINER.COOP.N_CTX", "0"], "CoOp", COOP_CFG, "TRAINER.COOP.N_CTX is 0: CoOp needs at least 1 context vector"),
    (["TRAINER.IVLP.N_CTX_VISION", "0"], "IVLP", IVLP_CFG,
     "TRAINER.IVLP.N_CTX_VISION is 0: IVLP needs at least 1 context vector there "
     "(TRAINER.IVLP.PROMPT_DEPTH_VISION is 12)"),
])
def test_invalid_settings_stop_before_any_work(pristine_root, tmp_path, capsys, extra, trainer, config, message):
    assert cli.main(argv(pristine_root, tmp_path / "out", trainer=trainer, config=config) + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unprompted_tower_needs_no_context(pristine_root, tmp_path):
    assert cli.main(argv(pristine_root, tmp_path / "out", trainer="IVLP", config=IVLP_CFG)
                    + ["TRAINER.IVLP.N_CTX_VISION", "0", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "0"]) == 0


def test_eval_only_without_model_dir_warns_unless_zero_shot(pristine_root, tmp_path, capsys):
    assert cli.main(argv(pristine_root, tmp_path / "coop", "--eval-only")) == 0
    out = capsys.readouterr().out
    assert "Learned parameters: 768" in out
    assert "Warning: --eval-only without --model-dir: CoOp's 768 learned parameters are untrained" in out
    assert cli.main(argv(pristine_root, tmp_path / "zs", "--eval-only", trainer="ZeroshotCLIP")) == 0
    out = capsys.readouterr().out
    assert "Learned parameters: 0 (nothing is trained: a zero-shot model)" in out and "untrained" not in out


# ---- resume with a changed config -------------------------------------------------------------------------------


def test_resume_with_a_changed_config_is_refused_unless_allowed(pristine_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = argv(pristine_root, out, epochs=2) + ["TRAIN.CHECKPOINT_FREQ", "1"]
    original = TrainerBase.after_epoch

    def stop_after_one(self):
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainerBase, "after_epoch", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    monkeypatch.setattr(TrainerBase, "after_epoch", original)
    config = (out / "config.yaml").read_text()
    capsys.readouterr()

    changed = args[:2] + ["--resume", str(out)] + args[2:] + ["OPTIM.LR", "0.5", "DATASET.NUM_SHOTS", "2"]
    assert cli.main(changed) == 2
    err = capsys.readouterr().err
    assert f"differs from the one of the run being resumed ({out / 'config.yaml'})" in err
    assert "DATASET.NUM_SHOTS: 4 -> 2; OPTIM.LR: 0.002 -> 0.5" in err and "--allow-changed-config" in err
    assert not (out / "prompt_learner/model.pth.tar-2").exists()

    assert cli.main(["--allow-changed-config"] + changed) == 0
    assert "Resuming with a changed config (--allow-changed-config): DATASET.NUM_SHOTS: 4 -> 2" in \
        capsys.readouterr().out
    assert (out / "config.yaml").read_text() == config  # the run's own config is never overwritten
    dated = [f for f in os.listdir(out) if f.startswith("config-") and f.endswith(".yaml")]
    assert len(dated) == 1 and yaml.safe_load((out / dated[0]).read_text())["OPTIM"]["LR"] == 0.5
    # where the data lives and how many workers load it may change
    same = args[:2] + ["--resume", str(out)] + args[2:] + ["DATALOADER.NUM_WORKERS", "1", "DATASET.ROOT", "/moved"]
    assert cli.config_changes(cli.setup_cfg(cli.build_parser().parse_args(same)), str(out / "config.yaml")) == []


# ---- tools and scripts --------------------------------------------------------------------------------------------


def test_parse_results_skips_and_names_damaged_metrics(tmp_path):
    for seed, content in ((1, '{"accuracy": 50.0}'), (2, '{"accuracy": 6'), (3, '{"accuracy": 70.0}')):
        folder = tmp_path / "oxford_pets" / "CoOp" / "cfg_16shots" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(content)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools/parse_results.py"), str(tmp_path),
                           "--protocol", "few_shot", "--seeds", "1", "3", "--no-write"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: skipped {tmp_path}/oxford_pets/CoOp/cfg_16shots/seed2/metrics.json: unreadable or truncated" \
        in proc.stderr
    assert "60.0" in proc.stdout  # the mean of the two readable seeds


B2N_ARGS = ["CoOp", "vit_b16_ep50", "synthetic", "1"]


@pytest.mark.parametrize("env, args, message", [
    ({"DATA": "/nonexistent/data"}, B2N_ARGS, "DATA=/nonexistent/data is not a folder"),
    ({}, B2N_ARGS + ["0"], "SHOTS must be an integer >= 1, got '0'"),
    ({"B2N_EVAL": "new sideways"}, B2N_ARGS, "B2N_EVAL takes new, all or base, got 'sideways'"),
    ({"PYTHON": "no-such-python"}, B2N_ARGS, "PYTHON=no-such-python is not an executable"),
    ({}, [""] + B2N_ARGS[1:], "TRAINER (1st argument) is empty"),
])
def test_protocol_scripts_check_arguments_before_training(tmp_path, env, args, message):
    env = {**os.environ, "DATA": str(tmp_path), "OUTPUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env}
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts/base2new.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert "tools/train.py" not in proc.stdout  # nothing ran


def test_image_list_paths_stay_in_the_image_folder(tmp_path):
    from vlprompt.datasets import build_dataset

    mine = tmp_path / "mine"
    mine.mkdir()
    items = [[f"{y}_{i}.png", y, f"class {y}"] for y in (0, 1) for i in range(3)] + [["../secret.png", 0, "class 0"]]
    for path, _, _ in items:
        (mine / path).write_bytes(b"not read")
    (mine / "list.json").write_text(json.dumps(items))
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME = str(tmp_path), "ImageList"
    cfg.DATASET.CUSTOM.DIR, cfg.DATASET.CUSTOM.LIST_FILE = "mine", "list.json"
    with pytest.raises(PathOutsideDatasetError,
                       match=r"list.json, entry 6 \('../secret.png'\): the image path leads outside the image folder"):
        build_dataset(cfg)
