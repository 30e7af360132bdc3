"""The toy world: rendering, captions, datasets, the toy CLIP's loading and pretraining, and learning checks.

The learning checks need a pretrained toy CLIP: the session fixture pretrains a short schedule once
(about 30 s on 2 cores) and caches it in pytest's cache folder, keyed by everything that shapes it.
"""
import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from vlprompt import cli
from vlprompt.clip.load import TOY_NAME, get_tokenizer, load_clip
from vlprompt.config import get_cfg_default, merge_from_file, merge_from_list
from vlprompt.datasets import build_dataset
from vlprompt.datasets.toyworld import ToyColours, ToyForms, ToyShapes, ToyShapesNoisy, write_toy_dataset
from vlprompt.toyworld import COLOURS, SHAPES, STYLES, Scene, grid_classes, held_out_pairs, pretrain_pairs, render
from vlprompt.toyworld import toy_opts
from vlprompt.toyworld.options import scale_depth
from vlprompt.toyworld.pretrain import PretrainConfig, loss_curve_path, pretrain
from vlprompt.toyworld.world import DOWNSTREAM_COLOURS, DOWNSTREAM_SHAPES, caption, caption_vocabulary

from conftest import REPO

TOY_SHAPES_CFG = os.path.join(REPO, "configs/datasets/toy_shapes.yaml")
COOP_CFG = os.path.join(REPO, "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml")
# The tests' pretraining: shorter than the demo's 800 x 256, enough for the learning checks below
# (zero-shot about 31% on ToyShapes base and new, chance 5.6%).
TEST_PRETRAIN = PretrainConfig(steps=300, batch_size=128)
CHANCE = 100.0 / 18


@pytest.fixture
def one_thread():
    """Tiny models and batches: one intra-op thread is fastest and is what the cached results assume."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the world --------------------------------------------------------------------------------------------
def test_render_is_deterministic_and_sized():
    scenes = [Scene(c % len(COLOURS), c % len(SHAPES), s, c % 2) for s in range(len(STYLES)) for c in range(10)]
    a = render(scenes, np.random.default_rng(5))
    b = render(scenes, np.random.default_rng(5))
    c = render(scenes, np.random.default_rng(6))
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shape_is_drawn_in_its_colour():
    red = np.array(COLOURS["red"]) * 255
    for style in ("photo", "outline", "light"):
        img = render([Scene(0, SHAPES.index("square"), STYLES.index(style), 1)], np.random.default_rng(0))[0]
        close = np.abs(img.astype(float) - red).max(axis=-1) < 40
        filled = close[12:20, 12:20].mean()  # the middle of a large square
        assert close.sum() > 20
        assert (filled < 0.5) if style == "outline" else (filled > 0.9), style


def test_grid_checkerboard_and_held_out_combinations():
    classes = grid_classes()
    assert len(classes) == 36 and len(set(classes)) == 36
    base, new = classes[:18], classes[18:]
    for half in (base, new):  # every colour and every shape in both halves, three times each
        assert sorted({c for c, _ in half}) == sorted(DOWNSTREAM_COLOURS)
        assert all(sum(c == colour for c, _ in half) == 3 for colour in DOWNSTREAM_COLOURS)
        assert all(sum(s == shape for _, s in half) == 3 for shape in DOWNSTREAM_SHAPES)
    held = held_out_pairs()
    assert len(held) == 6 and set(held) <= set(new)
    pairs = {(list(COLOURS)[c], SHAPES[s]) for c, s in pretrain_pairs()}
    assert len(pairs) == 100 - 6 and not pairs & set(held)


def test_captions_name_the_style_and_fit_the_context():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = Scene(int(rng.integers(10)), int(rng.integers(10)), STYLES.index("outline"), 0)
        text = caption(scene, rng)
        assert "outline" in text or "line drawing" in text
        assert SHAPES[scene.shape] in text
    tokens = get_tokenizer(TOY_NAME)(caption_vocabulary())
    assert int(tokens.argmax(-1).max()) < 20  # EOT early: the text tower runs ~20 of its 77 positions


# ---- datasets ---------------------------------------------------------------------------------------------
def dataset_cfg(root, config=TOY_SHAPES_CFG, *opts):
    cfg = get_cfg_default()
    merge_from_file(cfg, config)
    merge_from_list(cfg, ["DATASET.ROOT", str(root), *opts])
    return cfg


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    return tmp_path_factory.mktemp("toydata")


def test_toy_shapes_base_and_new(toy_root):
    base = build_dataset(dataset_cfg(toy_root, TOY_SHAPES_CFG, "DATASET.NUM_SHOTS", "16",
                                     "DATASET.SUBSAMPLE_CLASSES", "base"))
    assert base.classnames == [f"{c} {s}" for c, s in grid_classes()[:18]]
    assert len(base.train_x) == 18 * 16 and len(base.test) == 18 * 40
    new = build_dataset(dataset_cfg(toy_root, TOY_SHAPES_CFG, "DATASET.SUBSAMPLE_CLASSES", "new"))
    assert new.classnames == [f"{c} {s}" for c, s in grid_classes()[18:]]
    split = json.loads((toy_root / "toy_shapes" / ToyShapes.split_file).read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 36 * 32, "val": 36 * 8, "test": 36 * 40}
    from PIL import Image

    with Image.open(toy_root / "toy_shapes" / "images" / split["test"][0][0]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"


def test_domain_and_cross_dataset_variants(toy_root):
    noisy = build_dataset(dataset_cfg(toy_root, os.path.join(REPO, "configs/datasets/toy_shapes_noisy.yaml")))
    assert noisy.classnames == [f"{c} {s}" for c, s in grid_classes()]  # same labels as ToyShapes
    forms = build_dataset(dataset_cfg(toy_root, os.path.join(REPO, "configs/datasets/toy_forms.yaml")))
    assert forms.classnames == list(SHAPES)
    colours = build_dataset(dataset_cfg(toy_root, os.path.join(REPO, "configs/datasets/toy_colours.yaml")))
    assert colours.classnames == list(COLOURS)
    assert (toy_root / "toy_shapes_noisy" / ToyShapesNoisy.split_file).is_file()
    assert (toy_root / "toy_forms" / ToyForms.split_file).is_file()
    assert (toy_root / "toy_colours" / ToyColours.split_file).is_file()


def test_dataset_generation_is_deterministic(tmp_path):
    sizes = {"train": 2, "val": 1, "test": 1}
    for name in ("a", "b"):
        write_toy_dataset(str(tmp_path / name), ToyForms.classes()[:3], "outline", 4, split_file="s.json",
                          split_sizes=sizes)
    assert (tmp_path / "a/s.json").read_text() == (tmp_path / "b/s.json").read_text()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a/images").rglob("*.png"))
    assert len(files) == 12
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


# ---- the toy CLIP -----------------------------------------------------------------------------------------
def test_missing_toy_clip_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_TOY_CLIP", str(tmp_path / "none.pt"))
    with pytest.raises(FileNotFoundError, match="tools/pretrain_toyclip.py"):
        load_clip(TOY_NAME)
    assert load_clip("vlprompt-tiny") is not None  # the random tiny CLIP needs no file


def test_toy_opts_scale_the_official_depths():
    assert [scale_depth(d, 2) for d in (0, 1, 3, 6, 9, 12)] == [0, 1, 1, 1, 2, 2]
    opts = toy_opts("MaPLe", os.path.join(REPO, "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"))
    pairs = dict(zip(opts[0::2], opts[1::2]))
    assert pairs["TRAINER.MAPLE.PROMPT_DEPTH"] == "2" and pairs["MODEL.BACKBONE.NAME"] == TOY_NAME
    assert pairs["INPUT.SIZE"] == "(32, 32)"
    assert toy_opts("CoOp", COOP_CFG) == toy_opts()


def test_pretraining_reproduces_its_loss_curve_and_saves_a_loadable_checkpoint(tmp_path):
    cfg = PretrainConfig(steps=5, batch_size=16, warmup=2)
    first = pretrain(cfg, tmp_path / "a.pt", progress=False)
    second = pretrain(cfg, tmp_path / "b.pt", progress=False)
    assert len(first["losses"]) == 5 and first["losses"] == second["losses"]
    assert json.loads(loss_curve_path(tmp_path / "a.pt").read_text())["losses"] == first["losses"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.loss.json", "a.pt", "b.loss.json", "b.pt"]  # no temp files
    model = load_clip(TOY_NAME, str(tmp_path / "a.pt"))
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    other = pretrain(PretrainConfig(steps=5, batch_size=16, warmup=2, seed=1), tmp_path / "c.pt", progress=False)
    assert other["losses"] != first["losses"]


# ---- learning on the toy world ----------------------------------------------------------------------------
def _pretrain_key(cfg):
    """Everything that shapes the pretrained weights."""
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for name in ("render", "world", "pretrain"):
        h.update(Path(importlib.import_module(f"vlprompt.toyworld.{name}").__file__).read_bytes())
    h.update(Path(REPO, "vlprompt/clip/model_configs/vlprompt-toy.json").read_bytes())
    h.update(f"{torch.__version__} {open_clip.__version__}".encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def toy_clip_file(request, tmp_path_factory):
    """A toy CLIP pretrained with TEST_PRETRAIN, cached across test runs."""
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("toyclip")) if cache is not None else tmp_path_factory.mktemp("toyclip")
    path = folder / f"{TOY_NAME}-{_pretrain_key(TEST_PRETRAIN)}.pt"
    if not path.is_file():
        pretrain(TEST_PRETRAIN, path, progress=False)
    return str(path)


def train_cli(root, out, trainer, config, *opts, flags=()):
    argv = ["--root", str(root), "--seed", "1", "--trainer", trainer, "--dataset-config-file", TOY_SHAPES_CFG,
            "--config-file", config, "--output-dir", str(out), *flags, *toy_opts(trainer, config),
            "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "16", *opts]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    return json.loads((Path(out) / "metrics.json").read_text())["accuracy"]


@pytest.fixture(scope="session")
def zero_shot(toy_root, toy_clip_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("zeroshot")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {half: train_cli(toy_root, out / half, "ZeroshotCLIP", COOP_CFG, "MODEL.BACKBONE.PATH", toy_clip_file,
                                "DATASET.SUBSAMPLE_CLASSES", half, flags=["--eval-only"])
                for half in ("base", "new")}
    finally:
        torch.set_num_threads(threads)


def test_zero_shot_is_well_above_chance_on_base_and_new(zero_shot):
    assert zero_shot["base"] > 3 * CHANCE and zero_shot["new"] > 3 * CHANCE
    assert zero_shot["base"] < 80 and zero_shot["new"] < 80  # and leaves prompt learning room


def table_rows(markdown):
    """{method: [means]} of a --methods-as-rows table ("| CoOp | 64.3 ± 0.5 | ... |")."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith(("| method", "| ---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = [float(c.split("±")[0]) for c in cells[1:]]
    return rows


def test_coop_16_shots_beats_zero_shot_on_base(toy_root, toy_clip_file, zero_shot, tmp_path, one_thread):
    out = tmp_path / "coop"
    # the official config (SGD 0.002, 50 epochs, 4 context tokens from "a photo of a")
    base = train_cli(toy_root, out, "CoOp", COOP_CFG, "MODEL.BACKBONE.PATH", toy_clip_file,
                     "DATASET.SUBSAMPLE_CLASSES", "base")
    assert base > zero_shot["base"] + 10
    new = train_cli(toy_root, tmp_path / "new", "CoOp", COOP_CFG, "MODEL.BACKBONE.PATH", toy_clip_file,
                    "DATASET.SUBSAMPLE_CLASSES", "new",
                    flags=["--eval-only", "--model-dir", str(out), "--load-epoch", "50"])
    assert new > 3 * CHANCE


def test_demo_prints_the_base_to_new_and_open_world_tables(toy_root, toy_clip_file, tmp_path, monkeypatch, capsys,
                                                           one_thread):
    monkeypatch.setenv("VLPROMPT_TOY_CLIP", toy_clip_file)
    spec = importlib.util.spec_from_file_location("toy_demo", os.path.join(REPO, "tools/demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    output = tmp_path / "demo"
    args = ["--root", str(toy_root), "--output", str(output), "--seeds", "1"]
    assert demo.main(args + ["--trainers", "ZeroshotCLIP", "CoOp", "HiCroPL"]) == 0
    out = capsys.readouterr().out
    b2n_text, ow_text = out.split("### Base-to-new")[1].split("### Open-world")
    b2n, ow = table_rows(b2n_text), table_rows(ow_text)
    assert set(b2n) == set(ow) == {"ZeroshotCLIP", "CoOp", "HiCroPL"}
    assert b2n["CoOp"][0] > b2n["ZeroshotCLIP"][0]  # Base
    assert ow["ZeroshotCLIP"][1] > 100 / 36  # open-world Acc above chance over all 36 classes
    # the official folders: training on the base classes, one evaluation over all classes
    coop = ("toy_shapes", "shots_16", "CoOp", "vit_b16_ep50_ctxv1", "seed1")
    with open(output.joinpath("base2new", "test_all", *coop, "metrics.json")) as f:
        metrics = json.load(f)
    assert output.joinpath("base2new", "train_base", *coop, "metrics.json").is_file()
    assert not output.joinpath("base2new", "train_base", "toy_shapes", "shots_16", "ZeroshotCLIP").exists()
    assert b2n["CoOp"] == pytest.approx([metrics["base_to_new"][k] for k in ("base", "new", "hm")], abs=0.05)
    assert ow["CoOp"] == pytest.approx([metrics["open_world"][k] for k in ("hm", "accuracy")], abs=0.05)
    assert (output / "results_open_world.md").read_text().count("| CoOp |") == 1
    # a second call reuses the results
    assert demo.main(args + ["--trainers", "CoOp"]) == 0
    assert "reusing the earlier result" in capsys.readouterr().out
