"""vlprompt.load_model and vlprompt-predict against --eval-only runs of the same checkpoints (Synthetic data,
tiny CLIP, CPU)."""
import json
import os
import shutil

import pytest
import torch

import vlprompt
from vlprompt import cli
from vlprompt import predict as vp

from conftest import REPO

DATASET_CFG = os.path.join(REPO, "configs/datasets/synthetic.yaml")
CONFIGS = {
    "CoOp": "configs/trainers/CoOp/vit_b16_ep50.yaml",
    "CoCoOp": "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
    "BMIP": "configs/trainers/BMIP/BMIP_ctx2_dp9_lr2.yaml",
    "CoPrompt_BMIP": "configs/trainers/CoPrompt/coprompt.yaml",
    "HiCroPL": None,  # found below
}
FAST = ["MODEL.BACKBONE.NAME", "vlprompt-tiny", "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
        "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4"]
NEW_NAMES = ["crimson disc", "emerald block", "a photo of an axolotl", "sky-blue star"]


def config_of(trainer):
    if CONFIGS.get(trainer):
        return os.path.join(REPO, CONFIGS[trainer])
    folder = os.path.join(REPO, "configs/trainers", trainer)
    if not os.path.isdir(folder):
        return os.path.join(REPO, CONFIGS["CoOp"])
    return os.path.join(folder, sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))[0])


def trainer_names():
    from vlprompt.engine.trainer import TRAINER_REGISTRY
    import vlprompt.trainers  # noqa: F401

    return TRAINER_REGISTRY.names()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("predict-data"))


def train(data_root, out, trainer="CoOp", *extra):
    argv = ["--root", data_root, "--seed", "1", "--trainer", trainer, "--dataset-config-file", DATASET_CFG,
            "--config-file", config_of(trainer), "--output-dir", str(out), *FAST, *extra]
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="session")
def coop_run(data_root, tmp_path_factory):
    return train(data_root, tmp_path_factory.mktemp("coop") / "run")


def eval_only(data_root, run, out, trainer="CoOp", *extra):
    argv = ["--root", data_root, "--seed", "1", "--trainer", trainer, "--dataset-config-file", DATASET_CFG,
            "--config-file", config_of(trainer), "--output-dir", str(out), "--eval-only", "--model-dir", str(run),
            "--load-epoch", "1", *FAST, "TEST.SAVE_LOGITS", "True", *extra]
    assert cli.main(argv) == 0
    return torch.load(os.path.join(out, "logits.pt"))


def test_predict_on_a_folder_equals_eval_only_logits(data_root, coop_run, tmp_path, capsys):
    reference = eval_only(data_root, coop_run, tmp_path / "eval")
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for i, path in enumerate(reference["impath"]):  # the test images, renamed so the folder order is theirs
        shutil.copy(path, folder / f"{i:03d}.png")
    model = vlprompt.load_model(coop_run, device="cpu")
    assert model.class_names == json.loads((coop_run / "classnames.json").read_text())
    paths = vp.expand_image_paths([str(tmp_path / "images")])
    assert [os.path.basename(p) for p in paths] == [f"{i:03d}.png" for i in range(len(reference["impath"]))]
    logits = model.logits(paths)
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-5, atol=1e-5)
    # PIL images and pre-transformed tensors give the same logits
    from PIL import Image

    torch.testing.assert_close(model.logits([Image.open(p) for p in paths[:3]]), logits[:3], rtol=1e-5, atol=1e-5)
    tensors = torch.stack([model.load_image(p) for p in paths[:3]])
    torch.testing.assert_close(model.logits(tensors), logits[:3], rtol=1e-5, atol=1e-5)

    out = tmp_path / "preds.json"
    capsys.readouterr()
    assert vp.main(["--model-dir", str(coop_run), "--images", str(tmp_path / "images"), "--topk", "10",
                    "--output", str(out), "--device", "cpu"]) == 0
    written = json.loads(out.read_text())
    assert written["trainer"] == "CoOp" and written["skipped"] == []
    probs = reference["logits"].softmax(dim=1)
    for row, pred in zip(probs, written["predictions"]):
        for entry in pred["top"]:
            assert entry["probability"] == pytest.approx(float(row[model.class_names.index(entry["class"])]),
                                                         abs=1e-5)
        assert pred["top"][0]["class"] == model.class_names[int(row.argmax())]
    top = model.predict(paths[:2], topk=2)
    assert [c for c, _ in top[0]] == [written["predictions"][0]["top"][i]["class"] for i in range(2)]


def test_cli_skips_and_names_broken_images_and_reports_bad_input(coop_run, tmp_path, capsys):
    good = tmp_path / "good.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    capsys.readouterr()
    assert vp.main(["--model-dir", str(coop_run), "--images", str(broken), str(good), "--classes",
                    "red thing,blue thing", "--output", str(out), "--topk", "1"]) == 0
    err = capsys.readouterr().err
    assert "Skipped 1 unreadable images" in err and str(broken) in err
    lines = out.read_text().splitlines()
    assert lines[0] == "image,top1,top1_probability" and len(lines) == 2 and lines[1].startswith(str(good))

    assert vp.main(["--model-dir", str(tmp_path / "nope"), "--images", str(good)]) == 2
    assert "Run folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert vp.main(["--model-dir", str(coop_run), "--images", str(empty)]) == 2
    assert "No images found" in capsys.readouterr().err
    assert vp.main(["--model-dir", str(coop_run), "--images", str(tmp_path / "*.jpg")]) == 2
    assert "No such file, folder or matching pattern" in capsys.readouterr().err
    with pytest.raises(ValueError, match="repeated: a"):
        vlprompt.load_model(coop_run, classnames=["a", "b", "a"])


@pytest.mark.parametrize("trainer", trainer_names())
def test_set_classes_equals_a_model_built_with_those_names(data_root, coop_run, tmp_path, trainer, capsys):
    extra = ["TRAINER.HICROPL.TEACHER_NAME", "vlprompt-tiny"] if trainer == "HiCroPL" else []
    if trainer == "CoOp":
        run = coop_run
    elif trainer.startswith("ZeroshotCLIP"):  # nothing to train: the folder of an --eval-only run
        run = tmp_path / "run"
        argv = ["--root", data_root, "--seed", "1", "--trainer", trainer, "--dataset-config-file", DATASET_CFG,
                "--output-dir", str(run), "--eval-only", *FAST]
        assert cli.main(argv) == 0
    else:
        run = train(data_root, tmp_path / "run", trainer, *extra)
    images = vp.expand_image_paths([os.path.join(data_root, "synthetic", "images", "red_circle")])[:4]
    model = vlprompt.load_model(run, device="cpu", batch_size=4)
    before = model.logits(images)
    model.set_classes(NEW_NAMES)
    assert model.class_names == NEW_NAMES
    switched = model.logits(images)
    built = vlprompt.load_model(run, classnames=NEW_NAMES, device="cpu", batch_size=4)
    torch.testing.assert_close(switched, built.logits(images), rtol=1e-6, atol=1e-6)
    assert switched.shape == (4, len(NEW_NAMES)) and before.shape[1] == 10
    model.set_classes(built.class_names[:2] + ["x"])  # and back to a model that differs
    assert model.logits(images).shape == (4, 3)
    assert model.batch_dependent == trainer.endswith("BMIP")  # BMIP's structure with its official batch mean
    if trainer == "BMIP":  # the CLI says so in its header
        capsys.readouterr()
        assert vp.main(["--model-dir", str(run), "--images", images[0]]) == 0
        assert "depends on which images share its batch" in capsys.readouterr().out


def test_class_specific_context_cannot_change_classes(data_root, tmp_path):
    run = train(data_root, tmp_path / "csc", "CoOp", "TRAINER.COOP.CSC", "True")
    model = vlprompt.load_model(run, device="cpu")
    with pytest.raises(ValueError, match="CSC"):
        model.set_classes(NEW_NAMES)


def test_official_run_folder_given_the_trainer_and_config(coop_run, tmp_path, capsys):
    """An official CoOp folder: no config.yaml, no classnames.json, no pointer file, and the frozen prompt pieces
    (token_prefix/token_suffix) saved next to ctx."""
    trained = torch.load(coop_run / "prompt_learner" / "model.pth.tar-1", weights_only=False)
    official = tmp_path / "official"
    (official / "prompt_learner").mkdir(parents=True)
    names = json.loads((coop_run / "classnames.json").read_text())
    state = {"ctx": trained["state_dict"]["ctx"], "token_prefix": torch.randn(len(names), 1, 64),
             "token_suffix": torch.randn(len(names), 60, 64)}
    torch.save({"state_dict": state, "epoch": 50}, official / "prompt_learner" / "model.pth.tar-50")
    with pytest.raises(ValueError, match="no config.yaml: pass the trainer"):
        vlprompt.load_model(official, classnames=names)
    model = vlprompt.load_model(official, classnames=names, trainer="CoOp", config_file=config_of("CoOp"),
                                opts=["MODEL.BACKBONE.NAME", "vlprompt-tiny"], device="cpu")
    assert model.epoch == 50
    from PIL import Image

    images = [Image.new("RGB", (32, 32), (i * 40, 200 - i * 30, 90)) for i in range(3)]
    reference = vlprompt.load_model(coop_run, device="cpu")
    torch.testing.assert_close(model.logits(images), reference.logits(images), rtol=0, atol=0)
    image = tmp_path / "x.png"
    images[0].save(image)
    capsys.readouterr()
    assert vp.main(["--model-dir", str(official), "--trainer", "CoOp", "--config-file", config_of("CoOp"),
                    "--classes", ",".join(names), "--images", str(image), "--topk", "1",
                    "--opts", "MODEL.BACKBONE.NAME", "vlprompt-tiny"]) == 0
    expected = names[int(reference.logits(images[:1]).argmax())]
    assert capsys.readouterr().out.splitlines()[-1].split("\t")[1].startswith(expected + " ")
