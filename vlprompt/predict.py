"""Use a trained model: rebuild it from a run folder and classify images against any list of class names.

    model = vlprompt.load_model("output/coop/oxford_pets/seed1")       # config.yaml + checkpoint of the run
    model.predict(["cat.jpg", "dog.png"], topk=3)                       # [[(class, probability), ...], ...]
    model.set_classes(["tabby cat", "beagle", "axolotl"])               # any names: the text side is rebuilt
    model.logits(images)                                               # [N, classes] tensor

The command line (`vlprompt-predict`, `tools/predict.py`) wraps the same object. The model is the trainer's own
(TRAINER_REGISTRY, build_model, load_model, inference_state, model_inference); only the dataset is replaced by
the class names, so the logits are those of an `--eval-only` run on the same images.
"""
import argparse
import contextlib
import csv
import glob
import json
import os
import sys
from types import SimpleNamespace

import torch
import yaml
from tqdm import tqdm

from vlprompt.config import CfgNode, get_cfg_default, merge_from_file, merge_from_list
from vlprompt.engine import checkpoint as ckpt

__all__ = ["load_model", "Predictor", "build_for_classes", "expand_image_paths", "main"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CLASSNAMES_FILE = "classnames.json"  # written by a training run (TrainerBase.before_train)
# A note for methods whose prediction for one image depends on the other images of its batch.
BATCH_DEPENDENT_NOTE = ("BMIP with TRAINER.BMIP.VISION_SCORE batch_mean (the official score): the vision prompts mix "
                        "with weights averaged over the images of a batch, so a prediction depends on which images "
                        "share its batch (set VISION_SCORE per_sample for per-image predictions)")


def _read_run_config(path: str) -> dict:
    with open(path) as f:
        loaded = yaml.safe_load(f) or {}
    backbone = loaded.get("MODEL", {}).get("BACKBONE", {})
    if isinstance(backbone.get("PRETRAINED"), bool):  # Dassl's boolean key, before it took open_clip tags
        backbone["PRETRAINED"] = ""
    return loaded


def run_config(run_dir: str, trainer=None, config_file=None, dataset_config_file=None, opts=None, device="auto"):
    """The config of a run folder: its config.yaml, or (official runs, which keep none) the defaults with the
    given trainer and config files; then `opts` (KEY VALUE ...). Nothing is written (OUTPUT_DIR is empty)."""
    cfg = get_cfg_default()
    saved = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(saved) and not config_file:
        try:
            cfg.merge_from_other_cfg(CfgNode(_read_run_config(saved)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{saved} does not fit this vlprompt's config ({e}); was the run made by another "
                             f"version? Pass trainer= and config_file= to rebuild it from the method's config") from e
    else:
        if dataset_config_file:
            merge_from_file(cfg, dataset_config_file)
        if config_file:
            merge_from_file(cfg, config_file)
    if trainer:
        cfg.TRAINER.NAME = trainer
    if not cfg.TRAINER.NAME:
        raise ValueError(f"{run_dir} has no config.yaml: pass the trainer and its config file (an official run: "
                         f"trainer='CoOp', config_file='configs/trainers/CoOp/vit_b16_ep50.yaml')")
    merge_from_list(cfg, list(opts or []))
    cfg.OUTPUT_DIR = ""
    cfg.RESUME = ""
    cfg.MODEL.INIT_WEIGHTS = ""  # the run's own checkpoint is loaded below
    cfg.DEVICE = device or "auto"
    cfg.freeze()
    return cfg


def run_classnames(run_dir: str, cfg) -> list:
    """The classes a run was trained with, in label order: classnames.json, else the dataset the config names."""
    path = os.path.join(run_dir, CLASSNAMES_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            return list(json.load(f))
    from vlprompt.datasets import build_dataset

    try:
        return list(build_dataset(cfg).classnames)
    except Exception as e:  # no data on this machine: the user names the classes
        raise FileNotFoundError(
            f"{run_dir} has no {CLASSNAMES_FILE} (runs before vlprompt wrote it, official runs), and its dataset "
            f"{cfg.DATASET.NAME or '(none)'} could not be read from DATASET.ROOT '{cfg.DATASET.ROOT}' ({e}). Pass "
            f"the class names: load_model(..., classnames=[...]) or --classnames FILE / --classes a,b,c") from e


class _ClassesOnly(SimpleNamespace):
    """What a trainer reads from its DataManager, without a dataset: the class names (no loaders)."""

    def __init__(self, classnames):
        names = list(classnames)
        super().__init__(dataset=SimpleNamespace(classnames=names), classnames=names, num_classes=len(names),
                         lab2cname=dict(enumerate(names)), train_loader_x=None, train_loader_u=None,
                         val_loader=None, test_loader=None, num_skipped_images=0)


def _check_classnames(names) -> list:
    if isinstance(names, str):
        raise TypeError("class names must be a list of strings, not one string (did you mean [name] or "
                        "names.split(',')?)")
    names = [str(n).strip() for n in names]
    if not names:
        raise ValueError("the class list is empty")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f"class names at positions {empty} are empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"class names must be unique; repeated: {', '.join(duplicates)}")
    return names


def build_for_classes(trainer, classnames, clip_model):
    """The trainer's method built with `classnames` on `clip_model` (built on the CPU, then moved to the
    trainer's device), holding the trainer's current learned weights: equal, by construction, to a model built
    with those names that loaded the same checkpoint. Frozen and in eval mode."""
    device = next(clip_model.parameters()).device
    clip_model.to("cpu")  # building embeds tokens made on the CPU
    try:
        with torch.random.fork_rng(devices=[]):  # the initial values drawn here are overwritten below
            model = trainer.build_clip_model(clip_model, list(classnames))
    finally:
        clip_model.to(device)
    learnable = getattr(model, trainer.learnable_name, None) if trainer.learnable_name else None
    model.requires_grad_(False).to(trainer.device).eval()
    if learnable is None:
        return model
    own = learnable.state_dict()
    expected = {n for n, _ in learnable.named_parameters()}
    for name in trainer.get_model_names():
        state = trainer.trainable_state_dict(name)
        wrong = [f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and v.shape != own[k].shape]
        if wrong:
            raise ValueError(f"{type(trainer).__name__} cannot take another class list: its learned parameters "
                             f"depend on the number of classes ({'; '.join(wrong)}); e.g. CoOp with class-specific "
                             f"context (TRAINER.COOP.CSC True)")
        missing = sorted(expected - set(state))
        if missing:
            raise KeyError(f"the trained state of '{name}' lacks {missing[:5]}")
        learnable.load_state_dict(state, strict=False)
    return model


class _AllClassesEvaluation:
    """For TEST.EVAL_EVERY in a base-class run: the all-classes test set and the method built with all class
    names; refresh() copies the current learned weights into it."""

    def __init__(self, trainer):
        from vlprompt.clip import load_backbone
        from vlprompt.data.manager import build_data_loader
        from vlprompt.data.transforms import build_transform
        from vlprompt.datasets import build_dataset

        cfg = trainer.cfg.clone()
        cfg.defrost()
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
        cfg.freeze()
        dataset = build_dataset(cfg)
        self.classnames = list(dataset.classnames)
        self.loader = build_data_loader(cfg, sampler_type=cfg.DATALOADER.TEST.SAMPLER, data_source=dataset.test,
                                        batch_size=cfg.DATALOADER.TEST.BATCH_SIZE,
                                        tfm=build_transform(cfg, is_train=False), is_train=False)
        self.clip_model = load_backbone(cfg.MODEL.BACKBONE).to(trainer.precision.weight_dtype)
        self.model = None
        print(f"TEST.EVAL_EVERY: evaluating over all {len(self.classnames)} classes "
              f"({len(dataset.test)} test images) during training")

    def refresh(self, trainer):
        if self.model is None:
            self.model = build_for_classes(trainer, self.classnames, self.clip_model)
        else:
            learnable = getattr(self.model, trainer.learnable_name)
            for name in trainer.get_model_names():
                learnable.load_state_dict(trainer.trainable_state_dict(name), strict=False)
        return self.model, self.loader


def all_classes_evaluation(trainer):
    return _AllClassesEvaluation(trainer)


def _checkpoint_epoch(run_dir, names):
    """None to load model-best (when every model has one), else the epoch of the latest regular checkpoint."""
    if all(os.path.isfile(os.path.join(run_dir, n, ckpt.BEST_NAME)) for n in names):
        return None
    epochs = []
    for n in names:
        path = ckpt.latest_checkpoint(os.path.join(run_dir, n))
        if path is None:  # official runs without the pointer file: the highest epoch present
            folder = os.path.join(run_dir, n)
            found = [int(f.rsplit("-", 1)[1]) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                     if f.startswith("model.pth.tar-") and f.rsplit("-", 1)[1].isdigit()]
            if not found:
                raise FileNotFoundError(f"No checkpoint in {folder} (expected {ckpt.BEST_NAME} or model.pth.tar-N)")
            epochs.append(max(found))
        else:
            epochs.append(int(path.rsplit("-", 1)[1]))
    return min(epochs)


def load_model(run_dir, classnames=None, device="auto", epoch=None, trainer=None, config_file=None,
               dataset_config_file=None, opts=None, batch_size=None):
    """Rebuild a trained model from a run folder (its config.yaml and checkpoint); see Predictor.

    classnames: the class list to predict among (default: the run's classes). epoch: the checkpoint epoch
    (default: model-best when the run kept one, else the last). An official run (no config.yaml): pass
    `trainer` and `config_file` (and `dataset_config_file` when the method reads DATASET.NAME, as ZeroshotCLIP's
    templates and HiCroPL's descriptions do). opts: more KEY VALUE config options. batch_size: images per forward
    pass (default DATALOADER.TEST.BATCH_SIZE)."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"Run folder not found: {run_dir} (expected the --output-dir of a training run)")
    cfg = run_config(run_dir, trainer, config_file, dataset_config_file, opts, device)
    names = _check_classnames(classnames) if classnames is not None else run_classnames(run_dir, cfg)
    return Predictor(cfg, run_dir, names, epoch=epoch, batch_size=batch_size)


class Predictor:
    """A trained prompt-learning model that classifies images among a list of class names.

    predict(images, topk) and logits(images) take PIL images, image paths, or tensors (one [3, H, W] or a batch
    [N, 3, H, W], already transformed as the run's test transform does); they run in batches of `batch_size`
    under torch.no_grad, with the run's test transform for paths and PIL images. set_classes(names) changes the
    class list (the text side is recomputed once).

    Batch dependence: BMIP with its official VISION_SCORE batch_mean predicts an image with weights averaged over
    the images of its batch, so its logits depend on which images are batched together (and on batch_size); the
    `batch_dependent` attribute says so. All other methods predict each image on its own.
    """

    def __init__(self, cfg, run_dir, classnames, epoch=None, batch_size=None):
        from vlprompt.data.transforms import build_transform
        from vlprompt.engine.trainer import TRAINER_REGISTRY

        self.cfg, self.run_dir = cfg, run_dir
        base_cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
        if not hasattr(base_cls, "build_clip_model"):
            raise TypeError(f"{cfg.TRAINER.NAME} is not a CLIP prompt-learning trainer")

        class Capturing(base_cls):  # keeps the loaded CLIP, so set_classes rebuilds on it
            def build_clip_model(self, clip_model, names):
                self.clip_model = clip_model
                return super().build_clip_model(clip_model, names)

        Capturing.__name__ = base_cls.__name__
        names = _check_classnames(classnames)
        self.trainer = Capturing(cfg, dm=_ClassesOnly(names))
        model_names = self.trainer.get_model_names()
        if model_names:
            if epoch is None:
                epoch = _checkpoint_epoch(run_dir, model_names)
            self.trainer.load_model(run_dir, epoch=epoch)
        self.epoch = epoch
        self.transform = build_transform(cfg, is_train=False)
        self.batch_size = int(batch_size or cfg.DATALOADER.TEST.BATCH_SIZE)
        self.device = self.trainer.device
        self._names, self._state = names, None
        self.trainer.set_model_mode("eval")
        self.trainer.model.eval()

    # ---- classes ----------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list:
        return list(self._names)

    @property
    def trainer_name(self) -> str:
        return self.cfg.TRAINER.NAME

    @property
    def batch_dependent(self) -> bool:
        """True when a prediction depends on the other images of its batch (see the class docstring)."""
        return any(getattr(m, "vision_score", None) == "batch_mean" and getattr(m, "connect", "None") == "None"
                   for m in self.trainer.model.modules())

    def set_classes(self, names):
        """Predict among `names` from now on: the method is rebuilt with them on the loaded CLIP and given the
        trained weights (HiCroPL's fixed class embeddings are computed for the new names)."""
        names = _check_classnames(names)
        t = self.trainer
        t.model = build_for_classes(t, names, t.clip_model)
        t.num_classes, t.lab2cname = len(names), dict(enumerate(names))
        self._names, self._state = names, None

    # ---- images -----------------------------------------------------------------------------------------
    def load_image(self, image):
        """One input -> a [3, H, W] tensor through the run's test transform (tensors pass unchanged)."""
        from PIL import Image

        from vlprompt.data.manager import read_image

        if isinstance(image, torch.Tensor):
            return image
        if isinstance(image, Image.Image):
            return self.transform(image.convert("RGB"))
        if isinstance(image, (str, os.PathLike)):
            return self.transform(read_image(os.fspath(image)))
        raise TypeError(f"Cannot read an image from a {type(image).__name__}; pass a path, a PIL image or a tensor")

    def _batches(self, images):
        if isinstance(images, torch.Tensor):
            images = [images] if images.dim() == 3 else list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        for start in range(0, len(images), self.batch_size):
            yield torch.stack([self.load_image(x) for x in images[start:start + self.batch_size]])

    @torch.no_grad()
    def logits_of_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits [B, classes] of one transformed batch [B, 3, H, W], in one forward pass."""
        if self._state is None:  # whatever does not depend on the image: once per class list
            self._state = self.trainer.inference_state()
        return self.trainer.model_inference(batch.to(self.device), self._state).float().cpu()

    def logits(self, images) -> torch.Tensor:
        """[N, classes] logits (CLIP's scaled cosine similarities) of the images, on the CPU."""
        out = [self.logits_of_batch(b) for b in self._batches(images)]
        return torch.cat(out) if out else torch.zeros(0, len(self._names))

    def top_classes(self, logits: torch.Tensor, topk: int = 5) -> list:
        probs = logits.softmax(dim=1)
        scores, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [[(self._names[i], float(p)) for i, p in zip(row_i, row_p)]
                for row_i, row_p in zip(idx.tolist(), scores.tolist())]

    def predict(self, images, topk: int = 5) -> list:
        """Per image, its `topk` classes as (class name, probability) pairs, most likely first (softmax over the
        class list)."""
        return self.top_classes(self.logits(images), topk)


# ---- command line -------------------------------------------------------------------------------------------
def expand_image_paths(items) -> list:
    """Files, folders (their images, recursively, sorted) and glob patterns -> image paths, in order, once each."""
    paths, missing = [], []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(root, f) for root, _, files in os.walk(item) for f in files
                           if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                missing.append(item)
        paths.extend(found)
    if missing:
        raise FileNotFoundError(f"No such file, folder or matching pattern: {', '.join(missing)}")
    seen = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


def build_parser():
    p = argparse.ArgumentParser(
        prog="vlprompt-predict",
        description="Classify images with a trained prompt-learning model, among its classes or any list")
    p.add_argument("--model-dir", required=True, help="the run folder (--output-dir of the training run)")
    p.add_argument("--load-epoch", type=int, help="checkpoint epoch (default: model-best if kept, else the last)")
    p.add_argument("--images", nargs="+", required=True, help="image files, folders (recursive) or glob patterns")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--classnames", help="a text file with one class name per line (default: the run's classes)")
    group.add_argument("--classes", help="comma-separated class names, e.g. 'cat,dog,axolotl'")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--output", help="write the predictions to a .csv or .json file")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: DATALOADER.TEST.BATCH_SIZE)")
    p.add_argument("--trainer", help="official runs (no config.yaml): the trainer name")
    p.add_argument("--config-file", help="official runs: the method's config file")
    p.add_argument("--dataset-config-file", help="official runs: the dataset's config file")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="more config options, e.g. --opts MODEL.BACKBONE.PATH /weights/ViT-B-16.pt")
    return p


def _read_class_file(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _write_output(path, rows, skipped, header):
    ext = os.path.splitext(path)[1].lower()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    if ext == ".json":
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({**header, "predictions": [{"image": image, "top": [{"class": c, "probability": s} for c, s in top]}
                                                 for image, top in rows],
                       "skipped": [{"image": image, "error": err} for image, err in skipped]}, f, indent=2)
    else:
        k = max((len(top) for _, top in rows), default=0)
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image"] + [f"top{i + 1}{s}" for i in range(k) for s in ("", "_probability")])
            for image, top in rows:
                writer.writerow([image] + [v for c, s in top for v in (c, f"{s:.6f}")])
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.output and os.path.splitext(args.output)[1].lower() not in (".csv", ".json"):
        print(f"error: --output must end in .csv or .json, got {args.output}", file=sys.stderr)
        return 2
    if args.topk < 1:
        print("error: --topk must be at least 1", file=sys.stderr)
        return 2
    try:
        paths = expand_image_paths(args.images)
        if not paths:
            raise FileNotFoundError(f"No images found in {' '.join(args.images)} (extensions: "
                                    f"{' '.join(IMAGE_EXTENSIONS)})")
        classnames = None
        if args.classnames:
            classnames = _read_class_file(args.classnames)
        elif args.classes:
            classnames = [c.strip() for c in args.classes.split(",")]
        with contextlib.redirect_stdout(sys.stderr):  # building logs; stdout keeps the predictions
            model = load_model(args.model_dir, classnames=classnames, device=args.device, epoch=args.load_epoch,
                               trainer=args.trainer, config_file=args.config_file,
                               dataset_config_file=args.dataset_config_file, opts=args.opts,
                               batch_size=args.batch_size)
    except (FileNotFoundError, ValueError, TypeError, KeyError, RuntimeError) as e:  # RuntimeError: no CUDA
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = {"model_dir": args.model_dir, "trainer": model.trainer_name,
              "backbone": model.cfg.MODEL.BACKBONE.NAME, "epoch": model.epoch, "classes": model.class_names}
    print(f"# {model.trainer_name} from {args.model_dir} (checkpoint "
          f"{'model-best' if model.epoch is None else f'epoch {model.epoch}'}), backbone "
          f"{model.cfg.MODEL.BACKBONE.NAME}, {len(model.class_names)} classes, {len(paths)} images")
    if model.batch_dependent:
        header["note"] = BATCH_DEPENDENT_NOTE
        print(f"# note: {BATCH_DEPENDENT_NOTE}; batch size {model.batch_size}")
    rows, skipped = [], []
    batches = [paths[i:i + model.batch_size] for i in range(0, len(paths), model.batch_size)]
    for chunk in tqdm(batches, desc="predict", unit="batch", dynamic_ncols=True):
        loaded, names = [], []
        for path in chunk:
            try:
                loaded.append(model.load_image(path))
                names.append(path)
            except (OSError, ValueError) as e:  # undecodable or unreadable: listed, the rest goes on
                skipped.append((path, str(e)))
        if loaded:
            logits = model.logits_of_batch(torch.stack(loaded))
            rows.extend(zip(names, model.top_classes(logits, args.topk)))
    if args.output:
        _write_output(args.output, rows, skipped, header)
        print(f"Wrote {len(rows)} predictions to {args.output}")
    else:
        for image, top in rows:
            print(f"{image}\t" + "\t".join(f"{c} {s:.4f}" for c, s in top))
    if skipped:
        print(f"Skipped {len(skipped)} unreadable images:", file=sys.stderr)
        for image, err in skipped:
            print(f"  {image}: {err}", file=sys.stderr)
    if not rows:
        print("error: none of the images could be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
