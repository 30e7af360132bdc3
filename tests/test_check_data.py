"""tools/check_data.py and the readers' missing-data errors: the same pieces named, before any model is built."""
import os
import shutil

import pytest

from vlprompt import cli
from vlprompt.datasets import DATASET_REGISTRY
from vlprompt.datasets.benchmark import DatasetIncompleteError
from vlprompt.datasets.check import BENCHMARKS, main as check_main, resolve
from vlprompt.datasets.fixtures import FIXTURE_DATASETS, write_fixture_data

from conftest import REPO

COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50.yaml")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    write_fixture_data(str(root))
    return root


@pytest.fixture
def root(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "DATA")
    return tmp_path / "DATA"


def run_check(capsys, *argv):
    rc = check_main(list(argv))
    return rc, capsys.readouterr().out


def train(root, name, out):
    config = os.path.join(REPO, "configs/datasets", {
        "OxfordPets": "oxford_pets.yaml", "FGVCAircraft": "fgvc_aircraft.yaml", "ImageNetA": "imagenet_a.yaml",
        "Caltech101": "caltech101.yaml"}[name])
    return cli.main(["--root", str(root), "--trainer", "CoOp", "--dataset-config-file", config, "--config-file",
                     COOP_CFG, "--output-dir", str(out), "MODEL.BACKBONE.NAME", "vlprompt-tiny",
                     "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1"])


def test_all_fixtures_are_complete(pristine, capsys):
    rc, out = run_check(capsys, "--root", str(pristine))
    assert rc == 0 and "15 of 15 datasets found" in out
    assert all(f"{name}: found" in out for name in BENCHMARKS)


def test_dataset_names_resolve_like_the_configs():
    for alias, name in (("oxford_flowers", "OxfordFlowers"), ("Flowers102", "OxfordFlowers"),
                        ("dtd", "DescribableTextures"), ("imagenet_a", "ImageNetA"),
                        ("imagenet-sketch", "ImageNetSketch"), ("caltech-101", "Caltech101"),
                        ("fgvc_aircraft", "FGVCAircraft"), ("SUN397", "SUN397")):
        assert resolve(alias) == name
    with pytest.raises(KeyError, match="known"):
        resolve("mnist")


def test_missing_folder(root, capsys, tmp_path):
    shutil.rmtree(root / "oxford_pets")
    rc, out = run_check(capsys, "--root", str(root), "--dataset", "OxfordPets", "dtd")
    assert rc == 1
    assert f"OxfordPets: MISSING ({root / 'oxford_pets'})" in out and "DescribableTextures: found" in out
    assert f"dataset folder {root / 'oxford_pets'} not found" in out
    assert "split_zhou_OxfordPets.json" in out and "images.tar.gz" in out and "annotations" in out
    assert 'section "OxfordPets" of CoOp\'s DATASETS.md' in out
    assert "1 of 2 datasets found; incomplete: OxfordPets" in out


def test_missing_split_file_that_cannot_be_built(root, capsys, tmp_path):
    os.remove(root / "oxford_pets" / "split_zhou_OxfordPets.json")
    os.remove(root / "oxford_pets" / "annotations" / "test.txt")
    rc, out = run_check(capsys, "--root", str(root), "--dataset", "oxford_pets")
    assert rc == 1
    assert f"split file {root / 'oxford_pets' / 'split_zhou_OxfordPets.json'} not found" in out
    assert "annotations/test.txt missing too" in out and "Google Drive link in CoOp's DATASETS.md" in out

    # training stops with the same lines, before any model is built
    report = DATASET_REGISTRY.get("OxfordPets").check(str(root))
    assert train(root, "OxfordPets", tmp_path / "out") == 2
    err = capsys.readouterr()
    assert all(line in err.err for line in report.lines()) and "tools/check_data.py --root" in err.err
    assert "Loading CLIP" not in err.out
    assert not os.path.exists(tmp_path / "out" / "prompt_learner")


def test_missing_split_file_that_can_be_built_is_a_note(root, capsys):
    os.remove(root / "caltech-101" / "split_zhou_Caltech101.json")
    rc, out = run_check(capsys, "--root", str(root), "--dataset", "Caltech101")
    assert rc == 0 and "Caltech101: found" in out
    assert "split_zhou_Caltech101.json not found: it will be built from 101_ObjectCategories" in out
    assert not os.path.exists(root / "caltech-101" / "split_zhou_Caltech101.json")  # the check writes nothing


def test_missing_images_are_counted_with_examples(root, capsys, tmp_path):
    abbey = root / "sun397" / "SUN397" / "a" / "abbey"
    shutil.rmtree(abbey)
    os.remove(root / "dtd" / "images" / "bubbly" / "bubbly_0002.jpg")
    rc, out = run_check(capsys, "--root", str(root), "--dataset", "sun397", "dtd")
    assert rc == 1
    assert f"6 of 24 images listed in split_zhou_SUN397.json are missing under {root / 'sun397' / 'SUN397'} " \
           "(first: a/abbey/sun_" in out and "SUN397.tar.gz" in out
    assert "1 of 24 images listed in split_zhou_DescribableTextures.json are missing" in out
    assert "(first: bubbly/bubbly_0002.jpg)" in out
    rc, out = run_check(capsys, "--root", str(root), "--dataset", "dtd", "--no-images")
    assert rc == 0


def test_missing_side_files_and_images_of_list_based_readers(root, capsys, tmp_path):
    os.remove(root / "fgvc_aircraft" / "images_variant_val.txt")
    shutil.rmtree(root / "imagenet-adversarial" / "imagenet-a" / "n01443537")
    os.remove(root / "imagenet-adversarial" / "classnames.txt")
    rc, out = run_check(capsys, "--root", str(root), "--dataset", "FGVCAircraft", "ImageNetA", "ImageNetR")
    assert rc == 1
    assert f"file {root / 'fgvc_aircraft' / 'images_variant_val.txt'} not found" in out
    assert "fgvc-aircraft-2013b.tar.gz" in out
    assert f"file {root / 'imagenet-adversarial' / 'classnames.txt'} not found" in out
    assert "a copy of imagenet/classnames.txt" in out and "ImageNetR: found" in out
    with pytest.raises(DatasetIncompleteError, match="images_variant_val.txt"):
        from vlprompt.config import get_cfg_default
        from vlprompt.datasets import build_dataset

        cfg = get_cfg_default()
        cfg.DATASET.ROOT, cfg.DATASET.NAME = str(root), "FGVCAircraft"
        build_dataset(cfg)
    assert train(root, "ImageNetA", tmp_path / "out") == 2
    assert "imagenet-adversarial" in capsys.readouterr().err


def test_folders_without_a_class_name(root, capsys):
    (root / "imagenet" / "images" / "val" / "n99999999").mkdir()
    shutil.rmtree(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "3")
    rc, out = run_check(capsys, "--root", str(root), "--dataset", "ImageNet", "ImageNetV2")
    assert rc == 1
    assert "1 class folders in" in out and "have no line in classnames.txt (first: n99999999)" in out
    assert "1 numbered class folders are missing" in out and "(first: 3)" in out


def test_make_fixture_data_cli(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixture_data", os.path.join(REPO, "tools/make_fixture_data.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--root", str(tmp_path), "--dataset", "eurosat", "ImageNetR"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["eurosat", "imagenet-rendition"]
    assert tool.main(["--root", str(tmp_path), "--dataset", "eurosat"]) == 2  # never writes into an existing folder
    assert "already exists" in capsys.readouterr().err
    assert set(FIXTURE_DATASETS) == set(BENCHMARKS)
