"""A quick zero-shot probe of a toy CLIP on freshly rendered downstream images (no files, no trainer): what
the pretraining script prints at the end. The benchmark numbers come from the datasets and trainers."""
import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.clip.encoders import PromptedImageEncoder, PromptedTextEncoder

from .render import COLOURS, SHAPES, STYLES, Scene, render
from .world import grid_classes, held_out_pairs


@torch.no_grad()
def zero_shot_probe(model, tokenizer, style="outline", per_class=40, seed=12345, template="a photo of a {}."):
    """Accuracy (%) of `template` prompts on the 36 ToyShapes classes rendered in `style`: each half (18-way,
    as base-to-new evaluates) and the held-out combinations within the new half."""
    classes = grid_classes()
    names = [f"{c} {s}" for c, s in classes]
    colours, style_id = list(COLOURS), STYLES.index(style)
    rng = np.random.default_rng(seed)
    scenes, labels = [], []
    for label, (c, s) in enumerate(classes):
        for _ in range(per_class):
            scenes.append(Scene(colours.index(c), SHAPES.index(s), style_id, int(rng.integers(2))))
            labels.append(label)
    from .pretrain import to_tensor

    images = to_tensor(render(scenes, rng))
    labels = torch.tensor(labels)
    was_training = model.training
    model.eval()
    text = F.normalize(PromptedTextEncoder(model).encode_tokens(tokenizer([template.format(n) for n in names])), dim=-1)
    image = F.normalize(PromptedImageEncoder(model)(images), dim=-1)
    model.train(was_training)
    sims = image @ text.t()
    half = len(classes) // 2
    out = {}
    held = {f"{c} {s}" for c, s in held_out_pairs()}
    for name, lo, hi in (("base", 0, half), ("new", half, len(classes))):
        mask = (labels >= lo) & (labels < hi)
        pred = sims[mask][:, lo:hi].argmax(1) + lo
        correct = pred == labels[mask]
        out[name] = 100.0 * correct.float().mean().item()
        if name == "new":
            is_held = torch.tensor([names[i] in held for i in labels[mask].tolist()])
            out["held_out"] = 100.0 * correct[is_held].float().mean().item()
    return out
