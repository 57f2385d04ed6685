"""Rendering for the embedded world: latent factors in, 32x32 RGB images out (numpy, vectorised).

Every image is a pure function of its factors and a random generator (for nuisance detail:
texture period and phase, background noise, pixel noise), so a seeded generator gives
byte-identical images. Shapes are signed distance functions (SDFs) in object coordinates
(the object spans about [-1, 1], ``v`` points up); coverage is the SDF in pixels passed through a
one-pixel ramp, which antialiases edges for free. Textures are periodic or noise patterns in
pixel units, rotated with the object, so a texture looks the same at every object scale.

Layers, back to front: background, clutter (small flat distractor objects), the main object
(colour modulated by its texture, shaded according to the rendering style), then a per-style
post-process (sketch: grey line drawing; satellite: muted and blurred; infrared: dark, grey and
noisy; closeup: vignetted) and pixel noise.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 32  # image height and width in pixels
_HALF = np.float32(SIZE / 2)  # pixels per normalised unit (the image spans [-1, 1])
_c = (np.arange(SIZE, dtype=np.float32) + 0.5) / _HALF - 1.0
GX, GY = np.meshgrid(_c, _c)  # GX[y, x] = x coordinate, GY grows downwards
MAX_CLUTTER = 4

F = np.ndarray


# --------------------------------------------------------------------------- SDF primitives


def _len(x: F, y: F) -> F:
    return np.sqrt(x * x + y * y)


def circle(u: F, v: F, cx: float, cy: float, r: float) -> F:
    return _len(u - cx, v - cy) - r


def ring(u: F, v: F, cx: float, cy: float, r: float, w: float) -> F:
    return np.abs(circle(u, v, cx, cy, r)) - w


def box(u: F, v: F, cx: float, cy: float, bx: float, by: float) -> F:
    dx = np.abs(u - cx) - bx
    dy = np.abs(v - cy) - by
    return _len(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def capsule(u: F, v: F, ax: float, ay: float, bx: float, by: float, r: float) -> F:
    pax, pay = u - ax, v - ay
    bax, bay = bx - ax, by - ay
    h = np.clip((pax * bax + pay * bay) / (bax * bax + bay * bay), 0.0, 1.0)
    return _len(pax - bax * h, pay - bay * h) - r


def ellipse(u: F, v: F, cx: float, cy: float, a: float, b: float) -> F:
    """Approximate SDF (exact sign, roughly unit gradient near the edge)."""
    x, y = (u - cx) / a, (v - cy) / b
    return (np.sqrt(x * x + y * y) - 1.0) * min(a, b)


def triangle(u: F, v: F, p0: tuple, p1: tuple, p2: tuple) -> F:
    """Triangle as the intersection of three half-planes.

    Exact inside and along the edges (which is all that antialiasing and outlines use); beyond
    a corner it underestimates the distance, which never changes the sign.
    """
    pts = (p0, p1, p2)
    area = (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p1[1] - p0[1]) * (p2[0] - p0[0])
    orient = 1.0 if area > 0 else -1.0  # counter-clockwise: the inside is left of each edge
    out = None
    for k in range(3):
        (ax, ay), (bx, by) = pts[k], pts[(k + 1) % 3]
        ex, ey = bx - ax, by - ay
        norm = math.hypot(ex, ey)
        nx, ny = orient * ey / norm, -orient * ex / norm  # outward normal
        d = u * np.float32(nx) + v * np.float32(ny) - np.float32(nx * ax + ny * ay)
        out = d if out is None else np.maximum(out, d)
    return out


def union(*ds: F) -> F:
    out = ds[0]
    for d in ds[1:]:
        out = np.minimum(out, d)
    return out


def cut(a: F, b: F) -> F:
    """``a`` with ``b`` removed."""
    return np.maximum(a, -b)


def polar_star(u: F, v: F, points: int, r_out: float, r_in: float) -> F:
    rho = _len(u, v)
    th = np.arctan2(v, u) - np.float32(np.pi / 2)
    seg = np.float32(2 * np.pi / points)
    t = np.abs(np.mod(th + seg / 2, seg) - seg / 2) / (seg / 2)  # 0 at a spike, 1 between spikes
    return (rho - (r_out + (r_in - r_out) * t)) * 0.6


# --------------------------------------------------------------------------- concepts (shapes)


def _cat(u, v):
    head = circle(u, v, 0, -0.12, 0.62)
    ears = union(
        triangle(u, v, (-0.62, 0.15), (-0.18, 0.42), (-0.58, 0.95)),
        triangle(u, v, (0.62, 0.15), (0.18, 0.42), (0.58, 0.95)),
    )
    eyes = union(circle(u, v, -0.24, -0.02, 0.1), circle(u, v, 0.24, -0.02, 0.1))
    return cut(union(head, ears), eyes)


def _dog(u, v):
    head = union(circle(u, v, 0, 0.05, 0.52), ellipse(u, v, 0, -0.42, 0.3, 0.24))
    ears = union(ellipse(u, v, -0.6, -0.05, 0.2, 0.46), ellipse(u, v, 0.6, -0.05, 0.2, 0.46))
    eyes = union(circle(u, v, -0.2, 0.15, 0.09), circle(u, v, 0.2, 0.15, 0.09))
    return cut(union(head, ears), eyes)


def _rabbit(u, v):
    head = circle(u, v, 0, -0.4, 0.46)
    ears = union(ellipse(u, v, -0.2, 0.4, 0.14, 0.52), ellipse(u, v, 0.2, 0.4, 0.14, 0.52))
    eyes = union(circle(u, v, -0.17, -0.35, 0.08), circle(u, v, 0.17, -0.35, 0.08))
    return cut(union(head, ears), eyes)


def _bear(u, v):
    head = circle(u, v, 0, -0.12, 0.62)
    ears = union(circle(u, v, -0.5, 0.45, 0.25), circle(u, v, 0.5, 0.45, 0.25))
    eyes = union(circle(u, v, -0.22, 0.0, 0.09), circle(u, v, 0.22, 0.0, 0.09))
    return cut(union(head, ears), eyes)


def _mouse(u, v):
    head = circle(u, v, 0, -0.3, 0.42)
    ears = union(circle(u, v, -0.5, 0.3, 0.36), circle(u, v, 0.5, 0.3, 0.36))
    eyes = union(circle(u, v, -0.15, -0.25, 0.07), circle(u, v, 0.15, -0.25, 0.07))
    return cut(union(head, ears), eyes)


def _owl(u, v):
    body = ellipse(u, v, 0, -0.12, 0.58, 0.82)
    tufts = union(
        triangle(u, v, (-0.5, 0.35), (-0.15, 0.55), (-0.55, 0.95)),
        triangle(u, v, (0.5, 0.35), (0.15, 0.55), (0.55, 0.95)),
    )
    eyes = union(ring(u, v, -0.24, 0.22, 0.13, 0.05), ring(u, v, 0.24, 0.22, 0.13, 0.05))
    return cut(union(body, tufts), eyes)


def _bird(u, v):
    body = ellipse(u, v, -0.08, -0.12, 0.6, 0.36)
    head = circle(u, v, 0.48, 0.28, 0.27)
    beak = triangle(u, v, (0.7, 0.38), (0.7, 0.2), (1.0, 0.3))
    tail = triangle(u, v, (-0.55, -0.05), (-1.0, 0.3), (-1.0, -0.22))
    return cut(union(body, head, beak, tail), circle(u, v, 0.55, 0.34, 0.06))


def _fish(u, v):
    body = ellipse(u, v, 0.12, 0, 0.66, 0.4)
    tail = triangle(u, v, (-0.45, 0), (-0.98, 0.48), (-0.98, -0.48))
    return cut(union(body, tail), circle(u, v, 0.48, 0.1, 0.07))


def _turtle(u, v):
    shell = np.maximum(ellipse(u, v, 0, -0.25, 0.72, 0.65), -(v + 0.25))
    head = circle(u, v, 0.84, -0.12, 0.18)
    legs = union(circle(u, v, -0.45, -0.32, 0.15), circle(u, v, 0.45, -0.32, 0.15))
    return union(shell, head, legs)


def _snake(u, v):
    band = np.maximum((np.abs(v - 0.32 * np.sin(3.2 * u)) - 0.13) * 0.75, np.abs(u) - 0.8)
    return union(band, circle(u, v, 0.84, 0.32 * math.sin(3.2 * 0.84), 0.19))


def _deer(u, v):
    head = ellipse(u, v, 0, -0.35, 0.3, 0.45)
    ears = union(ellipse(u, v, -0.38, -0.05, 0.2, 0.08), ellipse(u, v, 0.38, -0.05, 0.2, 0.08))
    antlers = union(
        capsule(u, v, -0.14, 0.0, -0.5, 0.75, 0.06),
        capsule(u, v, 0.14, 0.0, 0.5, 0.75, 0.06),
        capsule(u, v, -0.32, 0.38, -0.72, 0.45, 0.055),
        capsule(u, v, 0.32, 0.38, 0.72, 0.45, 0.055),
    )
    return union(head, ears, antlers)


def _leaf(u, v):
    blade = np.maximum(circle(u, v, -0.5, 0, 0.95), circle(u, v, 0.5, 0, 0.95))
    stem = capsule(u, v, 0, -0.7, 0, -1.0, 0.05)
    return cut(union(blade, stem), capsule(u, v, 0, -0.6, 0, 0.6, 0.025))


def _tree(u, v):
    return union(circle(u, v, 0, 0.25, 0.62), box(u, v, 0, -0.62, 0.13, 0.36))


def _flower(u, v):
    rho = _len(u, v)
    th = np.arctan2(v, u)
    petals = (rho - (0.35 + 0.6 * np.abs(np.cos(2.5 * th)))) * 0.55
    return cut(petals, circle(u, v, 0, 0, 0.13))


def _mushroom(u, v):
    cap = np.maximum(circle(u, v, 0, -0.05, 0.85), -(v + 0.05))
    return union(cap, box(u, v, 0, -0.5, 0.2, 0.42))


def _house(u, v):
    walls = box(u, v, 0, -0.32, 0.62, 0.5)
    roof = triangle(u, v, (-0.85, 0.15), (0.85, 0.15), (0, 0.9))
    return cut(union(walls, roof), box(u, v, 0, -0.58, 0.14, 0.26))


def _cup(u, v):
    return union(box(u, v, -0.12, -0.1, 0.5, 0.62), ring(u, v, 0.45, -0.05, 0.28, 0.08))


def _umbrella(u, v):
    canopy = np.maximum(circle(u, v, 0, 0, 0.92), -v)
    stem = capsule(u, v, 0, 0, 0, -0.75, 0.06)
    hook = np.maximum(ring(u, v, 0.16, -0.75, 0.16, 0.05), v + 0.75)
    return union(canopy, stem, hook)


def _key(u, v):
    head = ring(u, v, -0.55, 0, 0.3, 0.11)
    shaft = box(u, v, 0.2, 0, 0.55, 0.07)
    teeth = union(box(u, v, 0.55, -0.16, 0.05, 0.13), box(u, v, 0.72, -0.16, 0.05, 0.13))
    return union(head, shaft, teeth)


def _bell(u, v):
    dome = circle(u, v, 0, 0.2, 0.45)
    skirt = union(
        triangle(u, v, (-0.45, 0.2), (0.45, 0.2), (-0.78, -0.55)),
        triangle(u, v, (0.45, 0.2), (0.78, -0.55), (-0.78, -0.55)),
    )
    return union(dome, skirt, circle(u, v, 0, -0.7, 0.14), circle(u, v, 0, 0.75, 0.1))


def _bottle(u, v):
    return union(box(u, v, 0, -0.32, 0.34, 0.6) - 0.04, box(u, v, 0, 0.5, 0.14, 0.3), box(u, v, 0, 0.84, 0.18, 0.08))


def _boat(u, v):
    hull = union(
        triangle(u, v, (-0.9, -0.35), (0.9, -0.35), (0.6, -0.78)),
        triangle(u, v, (-0.9, -0.35), (0.6, -0.78), (-0.6, -0.78)),
    )
    mast = box(u, v, 0, 0.2, 0.04, 0.56)
    sail = triangle(u, v, (0.07, -0.22), (0.07, 0.8), (0.72, -0.22))
    return union(hull, mast, sail)


def _star(u, v):
    return polar_star(u, v, 5, 0.98, 0.42)


def _ring(u, v):
    return ring(u, v, 0, 0, 0.65, 0.22)


def _cross(u, v):
    return union(box(u, v, 0, 0, 0.82, 0.22), box(u, v, 0, 0, 0.22, 0.82))


def _heart(u, v):
    return union(
        circle(u, v, -0.36, 0.28, 0.43),
        circle(u, v, 0.36, 0.28, 0.43),
        triangle(u, v, (-0.76, 0.16), (0.76, 0.16), (0, -0.88)),
    )


def _moon(u, v):
    return cut(circle(u, v, 0, 0, 0.82), circle(u, v, 0.4, 0.22, 0.68))


def _diamond(u, v):
    return (np.abs(u) / 0.65 + np.abs(v) / 0.95 - 1.0) * 0.55


def _arrow(u, v):
    return union(box(u, v, -0.28, 0, 0.55, 0.13), triangle(u, v, (0.18, 0.52), (0.18, -0.52), (0.96, 0)))


def _ball(u, v):
    return circle(u, v, 0, 0, 0.8)


@dataclass(frozen=True)
class Concept:
    name: str
    group: str  # animal, plant, object, symbol
    sdf: Callable[[F, F], F]


CONCEPTS: tuple[Concept, ...] = (
    Concept("cat", "animal", _cat),
    Concept("dog", "animal", _dog),
    Concept("rabbit", "animal", _rabbit),
    Concept("bear", "animal", _bear),
    Concept("mouse", "animal", _mouse),
    Concept("owl", "animal", _owl),
    Concept("bird", "animal", _bird),
    Concept("fish", "animal", _fish),
    Concept("turtle", "animal", _turtle),
    Concept("snake", "animal", _snake),
    Concept("deer", "animal", _deer),
    Concept("leaf", "plant", _leaf),
    Concept("tree", "plant", _tree),
    Concept("flower", "plant", _flower),
    Concept("mushroom", "plant", _mushroom),
    Concept("house", "object", _house),
    Concept("cup", "object", _cup),
    Concept("umbrella", "object", _umbrella),
    Concept("key", "object", _key),
    Concept("bell", "object", _bell),
    Concept("bottle", "object", _bottle),
    Concept("boat", "object", _boat),
    Concept("star", "symbol", _star),
    Concept("ring", "symbol", _ring),
    Concept("cross", "symbol", _cross),
    Concept("heart", "symbol", _heart),
    Concept("moon", "symbol", _moon),
    Concept("diamond", "symbol", _diamond),
    Concept("arrow", "symbol", _arrow),
    Concept("ball", "symbol", _ball),
)
CONCEPT_NAMES = [c.name for c in CONCEPTS]
GROUPS = sorted({c.group for c in CONCEPTS})

# --------------------------------------------------------------------------- textures, colours, backgrounds, styles

TEXTURES = ("plain", "stripes", "checks", "dots", "grid", "zigzag", "waves", "marble", "spots", "crosshatch")
TEXTURE_ADJECTIVES = {
    "plain": "plain",
    "stripes": "striped",
    "checks": "checkered",
    "dots": "dotted",
    "grid": "gridded",
    "zigzag": "zigzag",
    "waves": "wavy",
    "marble": "marbled",
    "spots": "spotted",
    "crosshatch": "crosshatched",
}

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.85, 0.15),
    "green": (0.20, 0.65, 0.20),
    "blue": (0.15, 0.30, 0.85),
    "purple": (0.55, 0.20, 0.70),
    "pink": (0.95, 0.55, 0.70),
    "brown": (0.50, 0.30, 0.12),
    "black": (0.08, 0.08, 0.08),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "teal": (0.10, 0.60, 0.60),
}
COLOUR_NAMES = list(COLOURS)
_COLOUR_RGB = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)

BACKGROUNDS = ("plain", "studio", "gradient", "sky", "grass", "indoor", "water", "sand", "fields", "foliage", "night")
STYLES = ("photo", "clipart", "sketch", "satellite", "infrared", "closeup")
# Which backgrounds each style can be rendered on (sampling restricts to these).
STYLE_BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "photo": ("plain", "studio", "gradient", "sky", "grass", "indoor", "water", "sand", "foliage", "night"),
    "clipart": ("plain", "studio", "gradient"),
    "sketch": ("studio",),
    "satellite": ("fields", "water", "sand", "grass"),
    "infrared": ("night", "foliage", "grass"),
    "closeup": ("foliage", "grass"),
}


# --------------------------------------------------------------------------- noise fields


def _interp_matrix(k: int) -> np.ndarray:
    """[SIZE, k] bilinear weights that stretch a k-point signal over SIZE pixels."""
    pos = (np.arange(SIZE) + 0.5) / SIZE * (k - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, k - 2)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((SIZE, k), np.float32)
    m[np.arange(SIZE), lo] = 1 - frac
    m[np.arange(SIZE), lo + 1] = frac
    return m


_INTERP = {k: _interp_matrix(k) for k in (3, 4, 6, 8, 12)}


def smooth_noise(rng: np.random.Generator, n: int, k: int) -> F:
    """[n, SIZE, SIZE] smooth noise in [0, 1] from a k x k random grid."""
    m = _INTERP[k]
    g = rng.random((n, k, k), dtype=np.float32)
    return np.einsum("hk,nkl,wl->nhw", m, g, m, optimize=True)


# --------------------------------------------------------------------------- textures


def texture_field(tex: np.ndarray, tu: F, tv: F, rng: np.random.Generator) -> F:
    """Texture intensity in [0, 1] for each image (``tex`` indices), given rotated pixel coords."""
    n = len(tex)
    out = np.zeros_like(tu)
    period = rng.uniform(5.0, 7.5, n).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    tau = np.float32(2 * np.pi)
    for t in np.unique(tex):
        i = np.nonzero(tex == t)[0]
        name = TEXTURES[t]
        p = period[i]
        a = tu[i] / p + phase[i, 0, None, None]
        b = tv[i] / p + phase[i, 1, None, None]
        if name == "plain":
            val = np.zeros_like(a)
        elif name == "stripes":
            val = np.clip(np.sin(tau * a) * 2.5 + 0.5, 0, 1)
        elif name == "checks":
            val = np.clip(np.sin(tau * a) * np.sin(tau * b) * 4 + 0.5, 0, 1)
        elif name == "dots":
            fa, fb = a - np.round(a), b - np.round(b)
            val = np.clip((0.3 - _len(fa, fb)) * 6 + 0.5, 0, 1)
        elif name == "grid":
            fa, fb = np.abs(a - np.round(a)), np.abs(b - np.round(b))
            val = np.clip((0.12 - np.minimum(fa, fb)) * 8 + 0.5, 0, 1)
        elif name == "zigzag":
            tri = np.abs(a - np.floor(a) - 0.5) * 2  # triangle wave along u
            val = np.clip(np.sin(tau * (b + 0.6 * tri)) * 2.5 + 0.5, 0, 1)
        elif name == "waves":
            val = np.clip(np.sin(tau * (b + 0.35 * np.sin(tau * a / 2.2))) * 2.5 + 0.5, 0, 1)
        elif name == "marble":
            nz = smooth_noise(rng, len(i), 4)
            val = np.clip(1.0 - np.abs(np.sin(tau * (2.2 * nz + 0.25 * a))) * 3.0, 0, 1)
        elif name == "spots":
            nz = smooth_noise(rng, len(i), 8)
            val = np.clip((nz - 0.62) * 12 + 0.5, 0, 1)
        elif name == "crosshatch":
            d1 = np.abs(np.sin(np.float32(np.pi) * (a + b)))
            d2 = np.abs(np.sin(np.float32(np.pi) * (a - b)))
            val = np.clip((0.35 - np.minimum(d1, d2)) * 5 + 0.5, 0, 1)
        else:  # pragma: no cover - TEXTURES and this switch are kept together
            raise ValueError(f"no renderer for texture {name!r}")
        out[i] = val
    return out


# --------------------------------------------------------------------------- backgrounds


def background(bg: np.ndarray, rng: np.random.Generator) -> F:
    """[n, SIZE, SIZE, 3] backgrounds for the background indices ``bg``."""
    n = len(bg)
    img = np.empty((n, SIZE, SIZE, 3), np.float32)
    ys = (GY[None, :, :, None] + 1) / 2  # 0 at top, 1 at bottom
    for b in np.unique(bg):
        i = np.nonzero(bg == b)[0]
        m = len(i)
        name = BACKGROUNDS[b]
        jit = rng.uniform(-0.06, 0.06, (m, 1, 1, 3)).astype(np.float32)
        if name == "plain":
            val = np.broadcast_to(rng.uniform(0.55, 0.95, (m, 1, 1, 3)).astype(np.float32), (m, SIZE, SIZE, 3))
        elif name == "studio":
            val = 0.93 + jit * 0.5 - 0.06 * ys
        elif name == "gradient":
            c1 = rng.uniform(0.3, 0.95, (m, 1, 1, 3)).astype(np.float32)
            c2 = rng.uniform(0.3, 0.95, (m, 1, 1, 3)).astype(np.float32)
            ang = rng.uniform(0, 2 * np.pi, m).astype(np.float32)
            t = (np.cos(ang)[:, None, None] * GX + np.sin(ang)[:, None, None] * GY + 1.5) / 3
            val = c1 + (c2 - c1) * t[..., None]
        elif name == "sky":
            val = np.array([0.35, 0.55, 0.92], np.float32) + np.array([0.45, 0.35, 0.08], np.float32) * ys + jit
        elif name == "grass":
            nz = smooth_noise(rng, m, 8)[..., None]
            val = (np.array([0.25, 0.55, 0.2], np.float32) + jit) * (0.75 + 0.5 * nz)
        elif name == "indoor":
            floor_at = rng.uniform(0.55, 0.8, (m, 1, 1, 1)).astype(np.float32)
            wall = np.array([0.8, 0.75, 0.65], np.float32) + jit
            floor = np.array([0.55, 0.42, 0.3], np.float32) + jit
            val = np.where(ys > floor_at, floor, wall)
        elif name == "water":
            ph = rng.uniform(0, 2 * np.pi, (m, 1, 1)).astype(np.float32)
            wav = np.sin(GY[None] * 18 + 2 * np.sin(GX[None] * 4) + ph)[..., None]
            val = np.array([0.15, 0.35, 0.6], np.float32) + jit + 0.06 * wav
        elif name == "sand":
            fine = rng.random((m, SIZE, SIZE, 1), dtype=np.float32)
            val = np.array([0.85, 0.75, 0.55], np.float32) + jit + 0.08 * (fine - 0.5)
        elif name == "fields":
            nz = smooth_noise(rng, m, 4)
            pal = np.array([[0.35, 0.5, 0.2], [0.6, 0.55, 0.3], [0.45, 0.35, 0.2], [0.7, 0.7, 0.35]], np.float32)
            q = np.clip((nz * 4.5 - 0.8).astype(np.int64), 0, 3)
            val = pal[q] + jit
        elif name == "foliage":
            nz = smooth_noise(rng, m, 12)[..., None]
            val = (np.array([0.1, 0.3, 0.1], np.float32) + jit * 0.5) * (0.5 + 1.0 * nz)
        elif name == "night":
            nz = smooth_noise(rng, m, 6)[..., None]
            val = 0.05 + 0.1 * nz + jit * 0.3
        else:  # pragma: no cover
            raise ValueError(f"no renderer for background {name!r}")
        img[i] = val
    return img


# --------------------------------------------------------------------------- layers


def shape_sdf_px(concept: np.ndarray, cx: F, cy: F, scale: F, rot: F) -> F:
    """[n, SIZE, SIZE] signed distance (in pixels) to each object's outline; negative inside."""
    n = len(concept)
    sdf = np.empty((n, SIZE, SIZE), np.float32)
    for k in np.unique(concept):
        i = np.nonzero(concept == k)[0]
        u, v = _object_coords(cx[i], cy[i], rot[i])
        inv = (1.0 / scale[i])[:, None, None]
        sdf[i] = CONCEPTS[k].sdf(u * inv, v * inv) * (scale[i] * _HALF)[:, None, None]
    return sdf


def _object_coords(cx: F, cy: F, rot: F) -> tuple[F, F]:
    """Offsets from each object's centre, rotated into its frame (image units, ``v`` up)."""
    c, s = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    dx = GX[None] - cx[:, None, None]
    dy = cy[:, None, None] - GY[None]
    return c * dx + s * dy, c * dy - s * dx


def _secondary(rgb: F) -> F:
    """The texture's second colour: a darker shade of bright colours, a lighter one of dark colours."""
    lum = rgb @ np.array([0.3, 0.59, 0.11], np.float32)
    dark = rgb * 0.38
    light = rgb * 0.4 + 0.42
    return np.where((lum > 0.3)[..., None], dark, light)


def _composite(img: F, runs: list[tuple[str, slice]], sdf: F, col: F, tex: F | None, shade: F | None) -> None:
    """Draw one object layer into ``img`` in place; ``runs`` are contiguous per-style slices."""
    alpha = np.clip(0.5 - sdf, 0, 1)[..., None]
    for name, sl in runs:
        a = alpha[sl]
        if name == "sketch":
            line = np.clip(1.3 - np.abs(sdf[sl]), 0, 1)[..., None]
            img[sl] -= 0.75 * line
            if tex is not None:
                img[sl] -= (tex[sl][..., None] > 0.5) * a * 0.3
            continue
        ci = col[sl]
        if name == "clipart":
            mean = ci.mean(-1, keepdims=True)
            ci = np.clip((ci - mean) * 1.4 + mean, 0, 1)
            band = ((sdf[sl] > -1.4) & (sdf[sl] < 0.6))[..., None]
            ci = np.where(band, np.float32(0.08), ci)
        elif shade is not None and name in ("photo", "closeup", "infrared"):
            ci = ci * shade[sl][..., None]
        img[sl] += (ci - img[sl]) * a


def _blur3(x: F) -> F:
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h = (p[:, :-2] + p[:, 1:-1] + p[:, 2:]) / 3
    return (h[:, :, :-2] + h[:, :, 1:-1] + h[:, :, 2:]) / 3


@dataclass
class Factors:
    """Per-image factors (arrays of length n). Indices refer to the vocabularies above."""

    concept: np.ndarray
    texture: np.ndarray
    colour: np.ndarray
    background: np.ndarray
    style: np.ndarray
    cx: np.ndarray  # object centre, image coordinates in [-1, 1] (y grows downwards)
    cy: np.ndarray
    scale: np.ndarray  # object half-size in image units (1.0 = spans the image)
    rot: np.ndarray  # radians
    noise: np.ndarray  # extra pixel-noise standard deviation (0-1 intensity units)
    clutter_concept: np.ndarray  # [n, MAX_CLUTTER], -1 = none
    clutter_colour: np.ndarray  # [n, MAX_CLUTTER]
    clutter_xy: np.ndarray  # [n, MAX_CLUTTER, 2]
    clutter_scale: np.ndarray  # [n, MAX_CLUTTER]

    def __len__(self) -> int:
        return len(self.concept)

    def take(self, idx: np.ndarray) -> Factors:
        return Factors(**{k: np.asarray(v)[idx] for k, v in self.__dict__.items()})


_STYLE_NOISE = {"photo": 0.02, "clipart": 0.0, "sketch": 0.015, "satellite": 0.02, "infrared": 0.07, "closeup": 0.02}
_LUM = np.array([0.3, 0.59, 0.11], np.float32)


def render(f: Factors, rng: np.random.Generator) -> np.ndarray:
    """Render images for the factors ``f``; returns uint8 [n, SIZE, SIZE, 3].

    Images are grouped by style internally (so per-style work runs on contiguous slices) and
    returned in the input order. The result depends only on ``f`` and the state of ``rng``.
    """
    n = len(f)
    order = np.argsort(np.asarray(f.style), kind="stable")
    f = f.take(order)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    style = np.asarray(f.style)
    runs = []
    for st in np.unique(style):
        idx = np.nonzero(style == st)[0]
        runs.append((STYLES[st], slice(int(idx[0]), int(idx[-1]) + 1)))

    img = background(np.asarray(f.background), rng)
    for name, sl in runs:
        if name == "sketch":  # paper
            img[sl] = 0.94 + rng.uniform(-0.02, 0.02, (sl.stop - sl.start, 1, 1, 1)).astype(np.float32)

    # Distractors: flat colour, behind the object. All layers merge into one (nearest wins).
    has_any = (f.clutter_concept >= 0).any(axis=1)
    if has_any.any():
        c_sdf = np.full((n, SIZE, SIZE), 1e3, np.float32)
        layer = np.zeros((n, SIZE, SIZE), np.int8)
        for k in range(f.clutter_concept.shape[1]):
            i = np.nonzero(f.clutter_concept[:, k] >= 0)[0]
            if len(i) == 0:
                continue
            rot = rng.uniform(-0.5, 0.5, len(i)).astype(np.float32)
            sdf_k = shape_sdf_px(
                f.clutter_concept[i, k],
                f32(f.clutter_xy[i, k, 0]),
                f32(f.clutter_xy[i, k, 1]),
                f32(f.clutter_scale[i, k]),
                rot,
            )
            old = c_sdf[i]
            nearer = sdf_k < old
            c_sdf[i] = np.where(nearer, sdf_k, old)
            layer[i] = np.where(nearer, np.int8(k), layer[i])
        rgb_layers = _COLOUR_RGB[f.clutter_colour] * 0.85  # [n, MAX_CLUTTER, 3]
        c_col = rgb_layers[np.arange(n)[:, None, None], layer]
        _composite(img, runs, c_sdf, c_col, None, None)

    cx, cy, scale, rot = f32(f.cx), f32(f.cy), f32(f.scale), f32(f.rot)
    sdf = shape_sdf_px(np.asarray(f.concept), cx, cy, scale, rot)
    ru, rv = _object_coords(cx, cy, rot)
    tex = texture_field(np.asarray(f.texture), ru * _HALF, rv * _HALF, rng)
    rgb = np.clip(_COLOUR_RGB[np.asarray(f.colour)] + rng.uniform(-0.05, 0.05, (n, 3)).astype(np.float32), 0, 1)
    col = rgb[:, None, None, :] + (_secondary(rgb) - rgb)[:, None, None, :] * tex[..., None]
    light = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    inv = (0.22 / scale)[:, None, None]
    shade = np.clip(1.0 + (np.cos(light)[:, None, None] * ru + np.sin(light)[:, None, None] * rv) * inv, 0.7, 1.3)
    _composite(img, runs, sdf, col, tex, shade)

    for name, sl in runs:
        x = img[sl]
        m = sl.stop - sl.start
        if name == "sketch":
            x = np.repeat(x.mean(-1, keepdims=True), 3, axis=-1)
        elif name == "satellite":
            x = _blur3(x * 0.65 + x.mean(-1, keepdims=True) * 0.35)
        elif name == "infrared":
            x = np.repeat((x @ _LUM * 0.75 + 0.04)[..., None], 3, axis=-1)
        elif name == "closeup":
            x = x * (1.0 - 0.3 * (GX * GX + GY * GY))[None, :, :, None]
        sigma = (_STYLE_NOISE[name] + f32(f.noise)[sl])[:, None, None, None]
        channels = 1 if name in ("infrared", "sketch") else 3  # grey sensor / paper noise
        # uniform noise with standard deviation sigma (cheaper to draw than Gaussian)
        x = x + (sigma * np.float32(12**0.5)) * (rng.random((m, SIZE, SIZE, channels), dtype=np.float32) - 0.5)
        img[sl] = x
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    out[order] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode one uint8 [H, W, 3] image as an 8-bit RGB PNG (deterministic bytes for equal pixels).

    A minimal encoder (every row uses PNG's "sub" filter, zlib level 1): several times
    faster than PIL for 32x32 images, and readable by every PNG decoder.
    """
    a = np.ascontiguousarray(image, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"png_bytes expects an [H, W, 3] uint8 image, got shape {a.shape}")
    h, w, _ = a.shape
    rows = np.empty((h, w * 3 + 1), np.uint8)
    rows[:, 0] = 1  # filter type "sub"
    flat = a.reshape(h, w * 3)
    rows[:, 1:4] = flat[:, :3]
    rows[:, 4:] = flat[:, 3:] - flat[:, :-3]  # uint8 wraps modulo 256, as PNG specifies
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return _PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _chunk(b"IEND", b"")


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to uint8 [H, W, 3] (any PNG PIL reads; converted to RGB)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
