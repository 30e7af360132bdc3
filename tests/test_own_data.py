"""Own data by config alone: ImageFolder (class folders) and ImageList (CSV / JSON), optional split file."""
import csv
import json
import os
import random

import pytest
from PIL import Image

from vlprompt import cli
from vlprompt.config import get_cfg_default
from vlprompt.datasets import build_dataset
from vlprompt.datasets.benchmark import DatasetIncompleteError
from vlprompt.datasets.check import main as check_main

from conftest import REPO


def png(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (value % 256, 40, 90)).save(path)
    return path


def tree(root, classes=("cat", "dog", "red_fox"), n=5, prefix=""):
    for k, c in enumerate(classes):
        for i in range(n):
            png(os.path.join(root, prefix, c, f"{c}_{i}.png"), 30 * k + i)
    os.makedirs(os.path.join(root, prefix, "empty_class"), exist_ok=True)  # no images: no class
    open(os.path.join(root, prefix, classes[0], "notes.txt"), "w").close()  # not an image


def cfg_for(root, name, shots=-1, seed=1, subsample="all", **custom):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS, cfg.SEED = str(root), name, shots, seed
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    for k, v in custom.items():
        cfg.DATASET.CUSTOM[k] = v
    return cfg


def rel(items, base):
    return [(os.path.relpath(d.impath, base), d.label, d.classname) for d in items]


def test_image_folder_split_by_ratios_is_fixed_and_independent_of_seed(tmp_path):
    tree(tmp_path / "pets")
    random.seed(0)
    a = build_dataset(cfg_for(tmp_path, "ImageFolder", DIR="pets"))
    random.seed(1)
    b = build_dataset(cfg_for(tmp_path, "ImageFolder", DIR="pets", SPLIT_RATIOS=(0.5, 0.2)))
    assert a.classnames == ["cat", "dog", "red_fox"] and a.num_classes == 3
    assert (len(a.train_x), len(a.val), len(a.test)) == (6, 3, 6)  # per class round(2.5)=2, round(1.0)=1, rest 2
    assert rel(a.train_x + a.val + a.test, tmp_path) == rel(b.train_x + b.val + b.test, tmp_path)
    files = sorted(p for p, _, _ in rel(a.train_x + a.val + a.test, tmp_path / "pets"))
    assert files == sorted(f"{c}/{c}_{i}.png" for c in ("cat", "dog", "red_fox") for i in range(5))
    assert all(a.classnames[d.label] == os.path.basename(os.path.dirname(d.impath)) for d in a.test)


def test_image_folder_train_test_folders_classnames_file_and_split_file(tmp_path):
    root = tmp_path / "birds"
    tree(root, ("b_sparrow", "a_crow"), n=3, prefix="train")
    tree(root, ("b_sparrow", "a_crow"), n=2, prefix="test")
    (root / "names.txt").write_text("a_crow carrion crow\nb_sparrow house sparrow\n")
    cfg = cfg_for(tmp_path, "ImageFolder", DIR=str(root), CLASSNAMES_FILE="names.txt", SPLIT_FILE="split.json")
    ds = build_dataset(cfg)
    assert ds.classnames == ["carrion crow", "house sparrow"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (6, 0, 4)
    assert all("/train/" in d.impath for d in ds.train_x) and all("/test/" in d.impath for d in ds.test)
    split = json.loads((root / "split.json").read_text())  # CoOp's format, relative to the image folder
    assert split["train"][0] == ["train/a_crow/a_crow_0.png", 0, "carrion crow"]
    # the written split file wins over the folder afterwards
    png(str(root / "train" / "a_crow" / "late.png"))
    assert len(build_dataset(cfg).train_x) == 6


def test_image_list_csv_with_split_column_and_fewshot_base_new(tmp_path):
    d = tmp_path / "mine"
    rows = []
    for k, name in enumerate(["zebra", "ant", "moose", "bee"]):
        for i in range(4):
            path = f"img/{name}{i}.png"
            png(str(d / path), k)
            rows.append({"path": path, "classname": name, "split": ["train", "train", "val", "test"][i]})
    with open(d / "list.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "classname", "split"])
        w.writeheader()
        w.writerows(rows)
    ds = build_dataset(cfg_for(tmp_path, "ImageList", DIR="mine", LIST_FILE="list.csv"))
    assert ds.classnames == ["ant", "bee", "moose", "zebra"]  # no labels given: sorted names
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 4, 4)
    random.seed(5)
    few = build_dataset(cfg_for(tmp_path, "ImageList", DIR="mine", LIST_FILE="list.csv", shots=1, seed=5,
                                subsample="new"))
    assert few.classnames == ["moose", "zebra"] and len(few.train_x) == 2 and len(few.test) == 2
    assert os.path.isfile(d / "split_fewshot" / "shot_1-seed_5.pkl")


def test_image_list_json_forms(tmp_path):
    d = tmp_path / "j"
    items = []
    for label in (1, 2, 3):  # 1-based labels: renumbered 0..2
        for i in range(5):
            items.append([png(str(d / f"{label}_{i}.png"), label), label, f"class {label}"])
    (d / "list.json").write_text(json.dumps(items))
    ds = build_dataset(cfg_for(tmp_path, "ImageList", DIR="j", LIST_FILE="list.json"))
    assert ds.classnames == ["class 1", "class 2", "class 3"] and {x.label for x in ds.test} == {0, 1, 2}
    assert len(ds.train_x) + len(ds.val) + len(ds.test) == 15

    coop_like = {"train": [[f"{y}_{i}.png", y, f"class {y}"] for y in (1, 2, 3) for i in range(3)],
                 "test": [{"path": f"{y}_4.png", "label": y} for y in (1, 2, 3)]}
    (d / "split_list.json").write_text(json.dumps(coop_like))
    (d / "names.json").write_text(json.dumps({"1": "class 1", "2": "class 2", "3": "class 3"}))
    ds = build_dataset(cfg_for(tmp_path, "ImageList", DIR="j", LIST_FILE="split_list.json",
                               CLASSNAMES_FILE="names.json"))
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (9, 0, 3)
    assert [d.classname for d in ds.test] == ["class 1", "class 2", "class 3"]

    (d / "bad.json").write_text(json.dumps([["1_0.png", 0, "a"], ["1_1.png", 0, "b"]]))
    with pytest.raises(ValueError, match="two class names"):
        build_dataset(cfg_for(tmp_path, "ImageList", DIR="j", LIST_FILE="bad.json"))


def test_own_data_missing_pieces_are_named(tmp_path, capsys):
    d = tmp_path / "mine"
    png(str(d / "a" / "x.png"))
    (d / "list.json").write_text(json.dumps([["a/x.png", 0, "a"], ["a/gone.png", 0, "a"]]))
    with pytest.raises(DatasetIncompleteError, match="DATASET.CUSTOM.LIST_FILE is empty"):
        build_dataset(cfg_for(tmp_path, "ImageList", DIR="mine"))
    with pytest.raises(DatasetIncompleteError, match="nothere.csv"):
        build_dataset(cfg_for(tmp_path, "ImageList", DIR="mine", LIST_FILE="nothere.csv"))
    with pytest.raises(DatasetIncompleteError, match="not found"):
        build_dataset(cfg_for(tmp_path, "ImageFolder", DIR="elsewhere"))
    with pytest.raises(DatasetIncompleteError, match=r"1 of 2 images listed in list.json are missing .*a/gone.png"):
        build_dataset(cfg_for(tmp_path, "ImageList", DIR="mine", LIST_FILE="list.json"))

    yaml = tmp_path / "mine.yaml"
    yaml.write_text('DATASET:\n  NAME: "ImageList"\n  CUSTOM:\n    DIR: "mine"\n    LIST_FILE: "list.json"\n')
    assert check_main(["--root", str(tmp_path), "--dataset-config-file", str(yaml)]) == 1
    out = capsys.readouterr().out
    assert "ImageList: MISSING" in out and "a/gone.png" in out and "docs/datasets.md" in out


def test_coop_base_to_new_on_an_image_folder_by_config_alone(tmp_path):
    tree(tmp_path / "data" / "shapes", ("circle", "square", "star", "heart"), n=5)
    yaml = tmp_path / "shapes.yaml"
    yaml.write_text('DATASET:\n  NAME: "ImageFolder"\n  CUSTOM:\n    DIR: "shapes"\n    SPLIT_FILE: "split.json"\n')
    common = ["--root", str(tmp_path / "data"), "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", str(yaml),
              "--config-file", os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml"),
              "MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1",
              "DATASET.NUM_SHOTS", "2"]
    out = tmp_path / "base"
    assert cli.main(common[:-8] + ["--output-dir", str(out)] + common[-8:] + ["DATASET.SUBSAMPLE_CLASSES", "base"]) == 0
    ev = tmp_path / "new"
    assert cli.main(common[:-8] + ["--output-dir", str(ev), "--eval-only", "--model-dir", str(out), "--load-epoch", "1"]
                    + common[-8:] + ["DATASET.SUBSAMPLE_CLASSES", "new"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["num_samples"] == 4 and (tmp_path / "data" / "shapes" / "split.json").is_file()
