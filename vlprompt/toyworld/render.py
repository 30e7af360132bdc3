"""The toy world's pictures: one coloured shape near the centre of a small RGB image, in one of four styles.

Everything is drawn with numpy from signed distance functions (negative inside, in units of the shape's
radius), anti-aliased by pixel coverage, for a whole batch at once: a batch of 256 images takes a few
milliseconds. All randomness comes from the numpy Generator passed in, so a seed fixes every pixel.
"""
import math
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32

# name -> RGB in [0, 1]. Chosen to stay distinguishable on dark and on light backgrounds.
COLOURS = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.97, 0.52, 0.08),
    "yellow": (0.95, 0.88, 0.12),
    "green": (0.16, 0.68, 0.20),
    "cyan": (0.10, 0.80, 0.86),
    "blue": (0.14, 0.28, 0.92),
    "purple": (0.56, 0.20, 0.78),
    "pink": (0.98, 0.50, 0.76),
    "brown": (0.52, 0.31, 0.12),
    "gray": (0.58, 0.58, 0.58),
}
# Every shape is its own mirror image, or stays the same class when mirrored (crescent), so a horizontal
# flip is a label-preserving augmentation.
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "heart", "crescent", "arrow")
# Rendering styles. Their captions name them ("an outline of a ..."), so every style is known to the model.
STYLES = ("photo", "outline", "noisy", "light")
SIZES = ("small", "large")
SIZE_RADIUS = {"small": (5.5, 8.0), "large": (9.5, 12.5)}  # shape radius in pixels, for 32 x 32 images
POSITION_JITTER = 0.15  # of the image side: shapes stay near the centre
MAX_ROTATION = 15.0  # degrees


def _polygon(vertices):
    """A convex polygon (vertices counter-clockwise, y up) as half-planes (normals [k, 2], offsets [k])."""
    v = np.asarray(vertices, dtype=np.float64)
    edges = np.roll(v, -1, axis=0) - v
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return normals, (normals * v).sum(axis=1)


def _polygon_sdf(poly, x, y):
    normals, offsets = poly
    out = None
    for (nx, ny), c in zip(normals.tolist(), offsets.tolist()):
        d = x * nx + y * ny - c
        out = d if out is None else np.maximum(out, d, out=out)
    return out


def _box_sdf(x, y, hx, hy, cx=0.0, cy=0.0):
    return np.maximum(np.abs(x - cx) - hx, np.abs(y - cy) - hy)


def _circle_sdf(x, y, r=1.0, cx=0.0, cy=0.0):
    return np.hypot(x - cx, y - cy) - r


def _star_pieces(outer=1.1, inner=0.46, extend=0.35):
    """A five-pointed star as the union of its inner pentagon and five spikes; each spike's sides run on
    into the pentagon, so the pieces overlap and the union shows no seam."""
    def point(r, a):
        return (r * math.cos(a), r * math.sin(a))

    top = math.pi / 2
    pentagon = _polygon([point(inner, top + math.pi / 5 + 2 * math.pi * k / 5) for k in range(5)])
    spikes = []
    for k in range(5):
        a = top + 2 * math.pi * k / 5
        out = np.array(point(outer, a))
        left, right = np.array(point(inner, a + math.pi / 5)), np.array(point(inner, a - math.pi / 5))
        spikes.append(_polygon([out, left + extend * (left - out), right + extend * (right - out)]))
    return [pentagon] + spikes


_TRIANGLE = _polygon([(0.0, 1.05), (-1.0, -0.68), (1.0, -0.68)])
_DIAMOND = _polygon([(0.0, 1.1), (-1.0, 0.0), (0.0, -1.1), (1.0, 0.0)])
_HEART_TIP = _polygon([(-0.92, 0.42), (0.0, -0.98), (0.92, 0.42)])
_ARROW_HEAD = _polygon([(0.0, 1.05), (-0.9, 0.05), (0.9, 0.05)])
_STAR = _star_pieces()


def shape_sdf(shape, x, y):
    """Signed distance (approximate outside, in radius units) of `shape` at points (x, y), y pointing up."""
    if shape == "circle":
        return _circle_sdf(x, y)
    if shape == "square":
        return _box_sdf(x, y, 0.86, 0.86)
    if shape == "triangle":
        return _polygon_sdf(_TRIANGLE, x, y + 0.1)
    if shape == "diamond":
        return _polygon_sdf(_DIAMOND, x, y)
    if shape == "cross":
        return np.minimum(_box_sdf(x, y, 1.0, 0.34), _box_sdf(x, y, 0.34, 1.0))
    if shape == "star":
        return np.min([_polygon_sdf(piece, x, y) for piece in _STAR], axis=0)
    if shape == "ring":
        r = np.hypot(x, y)
        return np.maximum(r - 1.0, 0.58 - r)
    if shape == "heart":
        lobes = np.minimum(_circle_sdf(x, y, 0.5, -0.45, 0.32), _circle_sdf(x, y, 0.5, 0.45, 0.32))
        return np.minimum(lobes, _polygon_sdf(_HEART_TIP, x, y))
    if shape == "crescent":
        return np.maximum(_circle_sdf(x, y), -_circle_sdf(x, y, 0.82, 0.48, 0.22))
    if shape == "arrow":
        return np.minimum(_polygon_sdf(_ARROW_HEAD, x, y), _box_sdf(x, y, 0.3, 0.72, 0.0, -0.28))
    raise ValueError(f"unknown shape {shape!r}")


@dataclass
class Scene:
    """What one image shows. Indices into COLOURS / SHAPES / STYLES / SIZES."""

    colour: int
    shape: int
    style: int
    size: int


def sample_scenes(rng, n, colours=None, shapes=None, styles=None, style_probs=None, pairs=None):
    """n random scenes. ``pairs`` ([(colour, shape), ...] indices) restricts the combinations drawn."""
    if pairs is not None:
        pick = rng.integers(0, len(pairs), n)
        colour = np.array([pairs[i][0] for i in pick], dtype=np.int64)
        shape = np.array([pairs[i][1] for i in pick], dtype=np.int64)
    else:
        colour = rng.choice(np.asarray(colours if colours is not None else range(len(COLOURS))), n)
        shape = rng.choice(np.asarray(shapes if shapes is not None else range(len(SHAPES))), n)
    style_ids = np.asarray(styles if styles is not None else range(len(STYLES)))
    style = rng.choice(style_ids, n, p=style_probs)
    size = rng.integers(0, len(SIZES), n)
    return [Scene(int(c), int(s), int(t), int(z)) for c, s, t, z in zip(colour, shape, style, size)]


def render(scenes, rng, image_size=IMAGE_SIZE):
    """uint8 images [n, H, W, 3] for the scenes; position, size, rotation, colour and background are drawn
    from ``rng`` (numpy Generator)."""
    n = len(scenes)
    s = image_size
    colour = np.array([sc.colour for sc in scenes])
    shape = np.array([sc.shape for sc in scenes])
    style = np.array([sc.style for sc in scenes])
    size = np.array([sc.size for sc in scenes])
    scale = s / 32.0

    lo = np.array([SIZE_RADIUS[SIZES[z]][0] for z in size]) * scale
    hi = np.array([SIZE_RADIUS[SIZES[z]][1] for z in size]) * scale
    radius = rng.uniform(lo, hi)
    centre = s / 2 + rng.uniform(-POSITION_JITTER, POSITION_JITTER, (n, 2)) * s
    angle = np.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION, n))
    # fill colour: the named colour, slightly jittered
    rgb = np.array([COLOURS[list(COLOURS)[c]] for c in colour]) + rng.uniform(-0.05, 0.05, (n, 3))

    # shape coordinates of every pixel centre: [n, s, s], y up, in units of the radius
    grid = np.arange(s) + 0.5
    dx = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]
    dy = -(grid[None, :, None] - centre[:, 1, None, None]) / radius[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    x = (cos * dx + sin * dy).astype(np.float32)
    y = (-sin * dx + cos * dy).astype(np.float32)
    sdf = np.empty((n, s, s), dtype=np.float32)
    for k, name in enumerate(SHAPES):
        idx = np.nonzero(shape == k)[0]
        if len(idx):
            sdf[idx] = shape_sdf(name, x[idx], y[idx])
    sdf_px = sdf * radius[:, None, None].astype(np.float32)
    outline = style == STYLES.index("outline")
    width = (rng.uniform(1.3, 2.2, n) * scale).astype(np.float32)
    band = np.abs(sdf_px + width[:, None, None] / 2) - width[:, None, None] / 2  # inner band of the outline
    sdf_px = np.where(outline[:, None, None], band, sdf_px)
    coverage = np.clip(0.5 - sdf_px, 0.0, 1.0)[..., None]

    # background: a dark tinted gradient, or a light one for the "light" style
    light = style == STYLES.index("light")
    base = np.where(light[:, None], rng.uniform(0.78, 0.95, (n, 1)), rng.uniform(0.05, 0.3, (n, 1)))
    tint = base + rng.uniform(-0.05, 0.05, (n, 3))
    ramp = np.linspace(-0.5, 0.5, s)
    direction = rng.uniform(0, 2 * math.pi, n)
    gradient = (np.cos(direction)[:, None, None] * ramp[None, None, :]
                + np.sin(direction)[:, None, None] * ramp[None, :, None]) * rng.uniform(0.0, 0.12, (n, 1, 1))
    background = (tint[:, None, None, :] + gradient[..., None]).astype(np.float32)
    image = background + (rgb[:, None, None, :].astype(np.float32) - background) * coverage

    noisy = style == STYLES.index("noisy")
    sigma = np.where(noisy, rng.uniform(0.16, 0.26, n), 0.025)
    image += rng.standard_normal(image.shape, dtype=np.float32) * sigma[:, None, None, None].astype(np.float32)
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
