"""Default config: every key Dassl's defaults define (same names, same values), plus vlprompt's own.

Per-trainer keys (TRAINER.COOP.*, TRAINER.MAPLE.*, ...) live next to each trainer, which registers a
function with ``@register_config_extension``; ``get_cfg_default()`` applies all of them.
"""
from yacs.config import CfgNode as CN

_C = CN()

_C.VERSION = 1

# Directory for log.txt, checkpoints, results
_C.OUTPUT_DIR = "./output"
# Directory of a previous run to resume from
_C.RESUME = ""
# Negative: no fixed seed (Dassl's default); >= 0: fixed seed
_C.SEED = -1
_C.USE_CUDA = True
_C.VERBOSE = True
# vlprompt: where to run: "auto" (cuda if available and USE_CUDA, else cpu), "cpu", "cuda", "cuda:N"
_C.DEVICE = "auto"

###########################
# Input
###########################
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
# Interpolation of resize transforms
_C.INPUT.INTERPOLATION = "bilinear"
# Names of the transforms to apply (see vlprompt.data transforms)
_C.INPUT.TRANSFORMS = ()
# If True, no transforms at all
_C.INPUT.NO_TRANSFORM = False
# ImageNet mean/std (CLIP configs override them)
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
# ColorJitter brightness, contrast, saturation, hue
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
# Random gray scale probability
_C.INPUT.RGS_P = 0.2
# Gaussian blur probability and kernel size (odd)
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

###########################
# Dataset
###########################
_C.DATASET = CN()
# Root folder holding the dataset folders
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
# Source/target domain names (DA/DG datasets only)
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
# Number of labeled instances in total (semi-supervised learning)
_C.DATASET.NUM_LABELED = -1
# Images per class for few-shot training; <= 0 means all
_C.DATASET.NUM_SHOTS = -1
# Fraction of validation data (SSL datasets only)
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.STL10_FOLD = -1
_C.DATASET.CIFAR_C_TYPE = ""
_C.DATASET.CIFAR_C_LEVEL = 1
_C.DATASET.ALL_AS_UNLABELED = False
# From CoOp's train.py: which classes to keep: "all", "base" (first half) or "new" (second half)
_C.DATASET.SUBSAMPLE_CLASSES = "all"

###########################
# Dataloader
###########################
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Apply the train transform K times to each image
_C.DATALOADER.K_TRANSFORMS = 1
# Also return the un-augmented image (consistency learning)
_C.DATALOADER.RETURN_IMG0 = False
# vlprompt: skip images that fail to decode (with a warning) instead of stopping
_C.DATALOADER.SKIP_BROKEN_IMAGES = False
# vlprompt: keep the decoded training images in memory (decoded once, before the first epoch), so later
# epochs do no image decoding; the few-shot training sets are small
_C.DATALOADER.CACHE_TRAIN_IMAGES = True
# vlprompt: > 0: the cached training images are downscaled to at most this shorter side (keep it above
# INPUT.SIZE so random crops keep their quality); 0: kept at full size (pixels identical to no cache)
_C.DATALOADER.CACHE_MAX_SIDE = 0
# vlprompt: memory budget of that cache in MB (0: none); images beyond it are read from disk every epoch
_C.DATALOADER.CACHE_MAX_MB = 8192
# vlprompt: a folder caching the test-time Resize + CenterCrop output of val/test images on disk, shared by
# runs and methods; keyed by dataset, split, transform and file path + mtime + size ("": no cache)
_C.DATALOADER.TEST_CACHE_DIR = ""
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
# RandomDomainSampler: domains per batch (0 or -1: all)
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
# RandomClassSampler: instances per class
_C.DATALOADER.TRAIN_X.N_INS = 16
_C.DATALOADER.TRAIN_U = CN()
# If True, train_u uses train_x's loader settings
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32

###########################
# Model
###########################
_C.MODEL = CN()
# Weights to initialise the model from
_C.MODEL.INIT_WEIGHTS = ""
# BMIP's key: >= 0 seeds torch with this value before the model is built, separately from SEED
_C.MODEL.INIT_SEED = -1
_C.MODEL.BACKBONE = CN()
# CLIP name as the official repos spell it ("ViT-B/16", "RN50") or an open_clip model name
_C.MODEL.BACKBONE.NAME = ""
# vlprompt (issue 16): an open_clip pretrained tag for NAME ("laion2b_s34b_b88k", "datacomp_xl_s13b_b90k");
# "": OpenAI's weights for the official names, none for vlprompt-*. Dassl's key held True/False (read as "").
_C.MODEL.BACKBONE.PRETRAINED = ""
# vlprompt: local weights file for the backbone (no download when set)
_C.MODEL.BACKBONE.PATH = ""
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
# Hidden layer sizes of the head, e.g. [512, 512]
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

###########################
# Optimization
###########################
_C.OPTIM = CN()
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.RMSPROP_ALPHA = 0.99
# Betas of adam, amsgrad and adamw
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
# HiCroPL's key: epsilon of adam/amsgrad/adamw (torch's default 1e-8)
_C.OPTIM.EPS = 1e-8
# STAGED_LR: the top-level children named in NEW_LAYERS get LR, the others LR * BASE_LR_MULT
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
# single_step, multi_step or cosine
_C.OPTIM.LR_SCHEDULER = "single_step"
# single_step uses the last entry; -1 or 0 means MAX_EPOCH
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
# Warmup is on when WARMUP_EPOCH > 0
_C.OPTIM.WARMUP_EPOCH = -1
# "linear" or "constant"
_C.OPTIM.WARMUP_TYPE = "linear"
# Learning rate during a constant warmup
_C.OPTIM.WARMUP_CONS_LR = 1e-5
# Learning rate of the first epoch of a linear warmup
_C.OPTIM.WARMUP_MIN_LR = 1e-5
# True: the main schedule starts from epoch 0 after warmup; False: it starts at WARMUP_EPOCH
_C.OPTIM.WARMUP_RECOUNT = True

###########################
# Train
###########################
_C.TRAIN = CN()
# Save a checkpoint every N epochs; <= 0: only the last one
_C.TRAIN.CHECKPOINT_FREQ = 0
# Print every N batches
_C.TRAIN.PRINT_FREQ = 10
# Count iterations per epoch by "train_x", "train_u" or "smaller_one"
_C.TRAIN.COUNT_ITER = "train_x"
# BMIP's keys: stop when validation accuracy has not improved for PATIENT_COUNT evaluations
_C.TRAIN.EARLY_STOPPING = False
_C.TRAIN.PATIENT_COUNT = 0
# vlprompt, under torchrun: DistributedDataParallel's find_unused_parameters, for a method whose loss does
# not reach every trainable parameter in every step (DDP stops with an error naming this option otherwise)
_C.TRAIN.DDP_FIND_UNUSED_PARAMETERS = False
# vlprompt: recompute the frozen towers' block activations in the backward pass instead of keeping them
# (less memory for many classes or large batches, about one more forward pass of time)
_C.TRAIN.GRAD_CHECKPOINTING = False

###########################
# Test
###########################
_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
# Save the confusion matrix to OUTPUT_DIR/cmat.pt
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
# Split used for the final evaluation: "test" or "val"
_C.TEST.SPLIT = "test"
# Model evaluated after training: "last_step" or "best_val" (evaluates every epoch)
_C.TEST.FINAL_MODEL = "last_step"
# vlprompt: also save the test logits and labels to OUTPUT_DIR
_C.TEST.SAVE_LOGITS = False
# vlprompt: write per-sample predictions (image path, label, top-5 classes and scores) to predictions.csv
_C.TEST.SAVE_PREDICTIONS = False
# vlprompt (issue 16): evaluate the test split every N epochs during training (0: off), logged to TensorBoard and
# OUTPUT_DIR/metrics_history.jsonl; a base-class run also gets the new classes' accuracy and the HM from the
# all-classes test set. The final results do not depend on it.
_C.TEST.EVAL_EVERY = 0

###########################
# Trainers (Dassl's own; prompt-learning trainers add theirs by extension)
###########################
_C.TRAINER = CN()
_C.TRAINER.NAME = ""
# CoPrompt's two keys, which its official train.py puts directly under TRAINER (not in a trainer node, so they
# are plain keys here): the weight of the consistency terms (official default 8.0; coprompt.yaml sets 1.0), and
# "cosine" or anything else for MSE
_C.TRAINER.W = 8.0
_C.TRAINER.DISTILL = "cosine"

# Domain adaptation
_C.TRAINER.MCD = CN()
_C.TRAINER.MCD.N_STEP_F = 4
_C.TRAINER.MME = CN()
_C.TRAINER.MME.LMDA = 0.1
_C.TRAINER.CDAC = CN()
_C.TRAINER.CDAC.CLASS_LR_MULTI = 10
_C.TRAINER.CDAC.RAMPUP_COEF = 30
_C.TRAINER.CDAC.RAMPUP_ITRS = 1000
_C.TRAINER.CDAC.TOPK_MATCH = 5
_C.TRAINER.CDAC.P_THRESH = 0.95
_C.TRAINER.CDAC.STRONG_TRANSFORMS = ()
_C.TRAINER.SE = CN()
_C.TRAINER.SE.EMA_ALPHA = 0.999
_C.TRAINER.SE.CONF_THRE = 0.95
_C.TRAINER.SE.RAMPUP = 300
_C.TRAINER.M3SDA = CN()
_C.TRAINER.M3SDA.LMDA = 0.5
_C.TRAINER.M3SDA.N_STEP_F = 4
_C.TRAINER.DAEL = CN()
_C.TRAINER.DAEL.WEIGHT_U = 0.5
_C.TRAINER.DAEL.CONF_THRE = 0.95
_C.TRAINER.DAEL.STRONG_TRANSFORMS = ()

# Domain generalization
_C.TRAINER.CROSSGRAD = CN()
_C.TRAINER.CROSSGRAD.EPS_F = 1.0
_C.TRAINER.CROSSGRAD.EPS_D = 1.0
_C.TRAINER.CROSSGRAD.ALPHA_F = 0.5
_C.TRAINER.CROSSGRAD.ALPHA_D = 0.5
_C.TRAINER.DDAIG = CN()
_C.TRAINER.DDAIG.G_ARCH = ""
_C.TRAINER.DDAIG.LMDA = 0.3
_C.TRAINER.DDAIG.CLAMP = False
_C.TRAINER.DDAIG.CLAMP_MIN = -1.0
_C.TRAINER.DDAIG.CLAMP_MAX = 1.0
_C.TRAINER.DDAIG.WARMUP = 0
_C.TRAINER.DDAIG.ALPHA = 0.5
_C.TRAINER.DAELDG = CN()
_C.TRAINER.DAELDG.WEIGHT_U = 0.5
_C.TRAINER.DAELDG.CONF_THRE = 0.95
_C.TRAINER.DAELDG.STRONG_TRANSFORMS = ()
_C.TRAINER.DOMAINMIX = CN()
_C.TRAINER.DOMAINMIX.TYPE = "crossdomain"
_C.TRAINER.DOMAINMIX.ALPHA = 1.0
_C.TRAINER.DOMAINMIX.BETA = 1.0

# Semi-supervised learning
_C.TRAINER.ENTMIN = CN()
_C.TRAINER.ENTMIN.LMDA = 1e-3
_C.TRAINER.MEANTEACHER = CN()
_C.TRAINER.MEANTEACHER.WEIGHT_U = 1.0
_C.TRAINER.MEANTEACHER.EMA_ALPHA = 0.999
_C.TRAINER.MEANTEACHER.RAMPUP = 5
_C.TRAINER.MIXMATCH = CN()
_C.TRAINER.MIXMATCH.WEIGHT_U = 100.0
_C.TRAINER.MIXMATCH.TEMP = 2.0
_C.TRAINER.MIXMATCH.MIXUP_BETA = 0.75
_C.TRAINER.MIXMATCH.RAMPUP = 20000
_C.TRAINER.FIXMATCH = CN()
_C.TRAINER.FIXMATCH.WEIGHT_U = 1.0
_C.TRAINER.FIXMATCH.CONF_THRE = 0.95
_C.TRAINER.FIXMATCH.STRONG_TRANSFORMS = ()


_CONFIG_EXTENSIONS = []


def register_config_extension(fn):
    """Decorator: ``fn(cfg)`` adds a trainer's keys (e.g. ``cfg.TRAINER.COOP = CN()``) in place.

    Registering a function with the same module and name again (a module reload) replaces the old one.
    """
    key = (fn.__module__, fn.__qualname__)
    _CONFIG_EXTENSIONS[:] = [f for f in _CONFIG_EXTENSIONS if (f.__module__, f.__qualname__) != key]
    _CONFIG_EXTENSIONS.append(fn)
    return fn


def get_cfg_default():
    """A fresh, unfrozen copy of the defaults with every registered trainer extension applied.

    Trainers register their keys when they are imported; entry points (the CLI, tools) import
    ``vlprompt.trainers`` first, so this module never needs to know them."""
    cfg = _C.clone()
    for extend in _CONFIG_EXTENSIONS:
        extend(cfg)
    return cfg
