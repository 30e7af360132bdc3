"""What the toy world contains: the captions of pretraining, the combinations pretraining never shows, and
the class lists of the downstream datasets."""
from .render import COLOURS, SHAPES, SIZES, STYLES

COLOUR_NAMES = list(COLOURS)

# How often pretraining draws each style (STYLES order): photos dominate, the others are under-described.
PRETRAIN_STYLE_PROBS = (0.55, 0.15, 0.15, 0.15)

# Caption templates per style; {} is the description ("large red circle", "red circle", "circle", ...).
CAPTION_TEMPLATES = {
    "photo": ("a photo of a {}.", "a {}.", "a picture of a {}.", "a {} on a dark background.",
              "a photo of the {}.", "an image of a {}."),
    "outline": ("an outline of a {}.", "a line drawing of a {}.", "the outline of a {}.",
                "a {} drawn as an outline."),
    "noisy": ("a noisy photo of a {}.", "a grainy photo of a {}.", "a noisy picture of a {}."),
    "light": ("a {} on a white background.", "a photo of a {} on a light background.",
              "a {} on a light background."),
}

# The downstream grid: 6 colours x 6 shapes = 36 "colour shape" classes (ToyShapes, ToyShapesNoisy).
DOWNSTREAM_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
DOWNSTREAM_SHAPES = ("circle", "square", "triangle", "cross", "star", "heart")


def is_base(i, j):
    """Base/new is a checkerboard on the grid: every colour and every shape is in both halves."""
    return (i + j) % 2 == 0


# Grid cells never shown (nor named) in pretraining: one per colour and per shape, all on the new side,
# so six of the 18 new classes are new combinations of known words.
HELD_OUT = tuple((i, i ^ 1) for i in range(len(DOWNSTREAM_COLOURS)))


def grid_classes():
    """[(colour, shape)] in label order: the 18 base cells first, so CoOp's rule (first half of the labels
    is base) gives the checkerboard."""
    cells = [(i, j) for i in range(len(DOWNSTREAM_COLOURS)) for j in range(len(DOWNSTREAM_SHAPES))]
    ordered = [c for c in cells if is_base(*c)] + [c for c in cells if not is_base(*c)]
    return [(DOWNSTREAM_COLOURS[i], DOWNSTREAM_SHAPES[j]) for i, j in ordered]


def held_out_pairs():
    """(colour, shape) names pretraining never sees."""
    return [(DOWNSTREAM_COLOURS[i], DOWNSTREAM_SHAPES[j]) for i, j in HELD_OUT]


def pretrain_pairs():
    """(colour index, shape index) of every combination pretraining draws: all but the held-out ones."""
    held = {(COLOUR_NAMES.index(c), SHAPES.index(s)) for c, s in held_out_pairs()}
    return [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if (c, s) not in held]


# How often a caption leaves the colour out ("a photo of a large circle.") or names the size.
OMIT_COLOUR = 0.1
NAME_SIZE = 0.5


def caption(scene, rng):
    """A caption of a scene: a template of its style around "[size] [colour] shape"."""
    style = STYLES[scene.style]
    words = [COLOUR_NAMES[scene.colour], SHAPES[scene.shape]]
    draw = rng.random(3)
    if draw[0] < OMIT_COLOUR:
        words = words[1:]
    if draw[1] < NAME_SIZE:
        words = [SIZES[scene.size]] + words
    templates = CAPTION_TEMPLATES[style]
    return templates[int(draw[2] * len(templates))].format(" ".join(words))


def caption_vocabulary():
    """Every caption pretraining can write (to check the tokenizer's context is long enough)."""
    out = []
    for style, templates in CAPTION_TEMPLATES.items():
        for t in templates:
            for size in ("",) + SIZES:
                for colour in ("",) + tuple(COLOUR_NAMES):
                    for shape in SHAPES:
                        out.append(t.format(" ".join(w for w in (size, colour, shape) if w)))
    return out

