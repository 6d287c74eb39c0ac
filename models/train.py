#!/usr/bin/env python3
"""Train the "is this drawing a car?" demo CNN on drawings it generates, and export car.tflite.

Host only: it needs TensorFlow, the optional extra pibake[convert] (`make venv`
installs it; or `pip install -e '.[convert]'`), and Pillow:

    .venv/bin/python models/train.py            # about 7 minutes on 2 busy CPU cores

Data (no download): 128x128 RGB drawings made here with fixed seeds. Class `car`:
a side view with a body, a cabin with one or two windows, two wheels (with or without
hubs), sometimes headlights, a door line and a bumper, facing left or right, tilted up
to 10 degrees, filled or outlined, at a random position, scale, line width and colours.
Class `other`: houses, trees, circles, stars, boats, random polygons, and hard negatives
that share a car's parts: bicycles, trailers and wagons (a body on wheels, no cabin),
carts (a tall box on wheels), snowmen, faces, traffic lights. Both classes get the same
distractors (a ground line, a sun, scribbles) and Gaussian pixel noise. Every training
epoch draws a fresh set (seed * 1000 + 100 + epoch); validation, held-out test and
samples have seeds of their own (seed + 3, + 1, + 2), so none of them is trained on.

Outputs:
    --out-dir (default: models/, next to this script)
        car.tflite        float32, input [1,128,128,3] in [0,1], softmax output [1,2]
        labels.txt        `car`, `other` (output order)
        samples/*.png     3 + 3 held-out drawings: car_<n>.png, other_<n>.png
        car_metrics.json  what was measured: held-out accuracy (Keras and TFLite), per class and kind, timings
    --work-dir (default: build/model/)
        car.keras         the trained Keras model, converted by pibake.convert.keras

Exit status 0 when every sample is classified as its name says with probability > 0.9.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Keep TensorFlow quiet; must be set before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

LABELS: list[str] = ["car", "other"]
IMAGE_SIZE = 128
SUPERSAMPLE = 2  # drawn at 256x256, downscaled with a box filter: smooth edges like a drawing program's
OTHER_KINDS: list[str] = [
    "house",
    "tree",
    "circles",
    "star",
    "boat",
    "polygon",
    "bicycle",
    "trailer",
    "wagon",
    "cart",
    "snowman",
    "face",
    "traffic_light",
]
SAMPLE_OTHER_KINDS = ["house", "bicycle", "snowman"]  # the other_<n>.png samples: fixed kinds, drawn at random

Colour = tuple[int, int, int]
Point = tuple[float, float]


# ---------------------------------------------------------------- drawing


def _colour(rng: random.Random) -> Colour:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))


def _contrasting(rng: random.Random, bg: Colour, minimum: int = 160) -> Colour:
    """A colour that differs visibly from BG (sum of channel differences >= MINIMUM)."""
    while True:
        c = _colour(rng)
        if sum(abs(a - b) for a, b in zip(c, bg, strict=True)) >= minimum:
            return c


class Pen:
    """Draws parts given in object units, placed by scale, rotation, mirror and offset."""

    def __init__(
        self,
        draw: ImageDraw.ImageDraw,
        rng: random.Random,
        bg: Colour,
        *,
        scale: float,
        origin: Point,
        angle: float = 0.0,
        mirror: bool = False,
    ) -> None:
        self.draw, self.rng, self.bg = draw, rng, bg
        self.scale, self.origin, self.mirror = scale, origin, mirror
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.filled = rng.random() < 0.65
        self.ink = _contrasting(rng, bg)  # outline colour of every part
        self.width = max(1, round(rng.uniform(1.0, 4.5) * SUPERSAMPLE))
        self.outline_filled = rng.random() < 0.6  # filled parts get an ink outline too

    def pt(self, x: float, y: float) -> Point:
        if self.mirror:
            x = -x
        rx, ry = x * self.cos - y * self.sin, x * self.sin + y * self.cos
        return (self.origin[0] + rx * self.scale, self.origin[1] + ry * self.scale)

    def part_colour(self) -> Colour:
        return _contrasting(self.rng, self.bg, 120)

    def poly(self, points: Sequence[Point], colour: Colour | None = None) -> None:
        pts = [self.pt(x, y) for x, y in points]
        if self.filled:
            outline = self.ink if self.outline_filled else None
            self.draw.polygon(pts, fill=colour or self.part_colour(), outline=outline, width=self.width)
        else:
            self.draw.line([*pts, pts[0]], fill=self.ink, width=self.width, joint="curve")

    def circle(self, centre: Point, radius: float, colour: Colour | None = None, *, solid: bool = False) -> None:
        cx, cy = self.pt(*centre)
        r = radius * self.scale
        box = (cx - r, cy - r, cx + r, cy + r)
        if self.filled or solid:
            outline = self.ink if self.outline_filled and not solid else None
            self.draw.ellipse(box, fill=colour or self.part_colour(), outline=outline, width=self.width)
        else:
            self.draw.ellipse(box, outline=self.ink, width=self.width)

    def line(self, points: Sequence[Point], width_factor: float = 1.0) -> None:
        self.draw.line(
            [self.pt(x, y) for x, y in points], fill=self.ink, width=max(1, round(self.width * width_factor))
        )


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _inset(points: Sequence[Point], amount: float) -> list[Point]:
    """Shrink a convex polygon towards its centroid by AMOUNT (object units, roughly)."""
    cx = sum(p[0] for p in points) / len(points)
    cy = sum(p[1] for p in points) / len(points)
    out = []
    for x, y in points:
        d = math.hypot(x - cx, y - cy) or 1.0
        k = max(0.0, (d - amount) / d)
        out.append((cx + (x - cx) * k, cy + (y - cy) * k))
    return out


def _wheels(pen: Pen, xs: Sequence[float], y: float, r: float, *, hubs: bool) -> None:
    tyre = pen.part_colour() if pen.rng.random() < 0.3 else (pen.rng.randint(0, 70),) * 3
    hub = pen.part_colour()
    for x in xs:
        pen.circle((x, y), r, tyre)
        if hubs:
            pen.circle((x, y), r * pen.rng.uniform(0.35, 0.55), hub)


def draw_car(pen: Pen) -> None:
    """A side view, length 1 unit, from x=-0.5 (back) to 0.5 (front); y grows downwards, 0 = body bottom."""
    rng = pen.rng
    hb = rng.uniform(0.18, 0.3)  # body height
    cf, cr = rng.uniform(0.0, 0.08), rng.uniform(0.0, 0.06)  # front and rear chamfers
    hood = rng.uniform(0.0, 0.35) * hb  # the front top drops by this much
    body = [
        (-0.5 + cr, 0.0),
        (0.5 - cf, 0.0),
        (0.5, -cf),
        (0.5, -hb + hood),
        (0.5 - rng.uniform(0.05, 0.15), -hb),
        (-0.5 + cr, -hb),
        (-0.5, -hb + cr),
        (-0.5, -cr),
    ]
    x0, x1 = rng.uniform(-0.38, -0.15), rng.uniform(0.1, 0.32)  # cabin base, back to front
    hc = rng.uniform(0.14, 0.26)
    sr, sf = rng.uniform(0.0, 0.12), rng.uniform(0.04, 0.18)
    cabin = [(x0, -hb), (x1, -hb), (x1 - sf, -hb - hc), (x0 + sr, -hb - hc)]
    wheel_r = rng.uniform(0.075, 0.12)
    wheel_y = rng.uniform(-0.02, 0.03)
    wheel_x = (rng.uniform(-0.36, -0.22), rng.uniform(0.2, 0.34))

    glass = (rng.randint(150, 230), rng.randint(190, 245), rng.randint(210, 255))
    if pen.rng.random() < 0.5:  # cabin behind the body, like a drawing done in two shapes
        pen.poly(cabin)
        pen.poly(body)
    else:
        pen.poly(body)
        pen.poly(cabin)
    m = rng.uniform(0.025, 0.04)
    win = _inset(cabin, m * 1.6)
    if rng.random() < 0.7:  # two windows with a pillar between them
        top_y, bot_y = win[2][1], win[0][1]
        mid_b = (win[0][0] + win[1][0]) / 2
        mid_t = (win[3][0] + win[2][0]) / 2
        gap = m * 0.6
        pen.poly([win[0], (mid_b - gap, bot_y), (mid_t - gap, top_y), win[3]], glass)
        pen.poly([(mid_b + gap, bot_y), win[1], win[2], (mid_t + gap, top_y)], glass)
    else:
        pen.poly(win, glass)
    if rng.random() < 0.5:  # door line
        dx = rng.uniform(x0 + 0.05, x1 - 0.05)
        pen.line([(dx, -hb + 0.02), (dx, -0.03)], 0.7)
    if rng.random() < 0.5:  # headlight
        pen.circle((0.5 - 0.04, -hb + hood + 0.04), rng.uniform(0.015, 0.03), (255, 230, 120), solid=True)
    if rng.random() < 0.3:  # bumper
        pen.line([(0.42, -0.02), (0.52, -0.02)], 1.2)
    _wheels(pen, wheel_x, wheel_y, wheel_r, hubs=rng.random() < 0.7)


def draw_house(pen: Pen) -> None:
    rng = pen.rng
    w, h = rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.8)
    roof = rng.uniform(0.25, 0.5)
    overhang = rng.uniform(0.0, 0.08)
    pen.poly(_rect(-w / 2, -h, w / 2, 0))
    pen.poly([(-w / 2 - overhang, -h), (w / 2 + overhang, -h), (0, -h - roof)])
    dw, dh = rng.uniform(0.12, 0.2), rng.uniform(0.25, 0.45) * h + 0.1
    dx = rng.uniform(-w / 2 + 0.05, w / 2 - 0.05 - dw)
    pen.poly(_rect(dx, -dh, dx + dw, 0))
    for _ in range(rng.randint(0, 2)):
        s = rng.uniform(0.1, 0.16)
        wx = rng.uniform(-w / 2 + 0.04, w / 2 - 0.04 - s)
        wy = rng.uniform(-h + 0.06, -h / 2)
        pen.poly(_rect(wx, wy, wx + s, wy + s), (200, 230, 255))
    if rng.random() < 0.4:  # chimney
        cx = rng.uniform(0.1, w / 2 - 0.12)
        pen.poly(_rect(cx, -h - roof * 0.9, cx + 0.08, -h - roof * (1 - 2 * cx / w) * 0.6))


def draw_tree(pen: Pen) -> None:
    rng = pen.rng
    trunk_h, trunk_w = rng.uniform(0.25, 0.45), rng.uniform(0.08, 0.16)
    pen.poly(_rect(-trunk_w / 2, -trunk_h, trunk_w / 2, 0), (rng.randint(80, 140), rng.randint(40, 90), 20))
    green = (rng.randint(0, 90), rng.randint(110, 220), rng.randint(0, 90))
    if rng.random() < 0.5:
        for _ in range(rng.randint(1, 3)):
            r = rng.uniform(0.2, 0.35)
            pen.circle((rng.uniform(-0.12, 0.12), -trunk_h - r * rng.uniform(0.6, 1.0)), r, green)
    else:
        w, y = rng.uniform(0.45, 0.7), -trunk_h
        for _ in range(rng.randint(1, 3)):
            h = rng.uniform(0.3, 0.45)
            pen.poly([(-w / 2, y), (w / 2, y), (0, y - h)], green)
            y -= h * 0.55
            w *= 0.8


def draw_circles(pen: Pen) -> None:
    rng = pen.rng
    for _ in range(rng.randint(1, 4)):
        r = rng.uniform(0.08, 0.35)
        # half of the time on a common "ground", like wheels
        y = -r if rng.random() < 0.5 else rng.uniform(-0.8, 0.0)
        pen.circle((rng.uniform(-0.5, 0.5), y), r)


def draw_star(pen: Pen) -> None:
    rng = pen.rng
    n, r_out = rng.randint(4, 8), rng.uniform(0.3, 0.5)
    r_in = r_out * rng.uniform(0.35, 0.6)
    a0 = rng.uniform(0, math.pi)
    pts = []
    for k in range(2 * n):
        r = r_out if k % 2 == 0 else r_in
        a = a0 + math.pi * k / n
        pts.append((r * math.cos(a), -r_out + r * math.sin(a)))
    pen.poly(pts)


def draw_boat(pen: Pen) -> None:
    rng = pen.rng
    w, h = rng.uniform(0.7, 1.0), rng.uniform(0.15, 0.25)
    pen.poly([(-w / 2, -h), (w / 2, -h), (w / 2 - rng.uniform(0.08, 0.2), 0), (-w / 2 + rng.uniform(0.08, 0.2), 0)])
    mast = rng.uniform(0.45, 0.75)
    mx = rng.uniform(-0.1, 0.1)
    pen.line([(mx, -h), (mx, -h - mast)])
    pen.poly([(mx + 0.02, -h - 0.05), (mx + 0.02, -h - mast), (mx + rng.uniform(0.2, 0.4), -h - 0.05)])
    if rng.random() < 0.5:
        pen.poly([(mx - 0.02, -h - 0.05), (mx - 0.02, -h - mast * 0.8), (mx - rng.uniform(0.15, 0.3), -h - 0.05)])
    if rng.random() < 0.5:  # portholes
        for k in range(rng.randint(1, 3)):
            pen.circle((-w / 4 + k * 0.15, -h / 2), 0.03, (230, 240, 255))


def draw_polygon(pen: Pen) -> None:
    rng = pen.rng
    n = rng.randint(3, 8)
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(n))
    r = rng.uniform(0.25, 0.5)
    pen.poly([(r * rng.uniform(0.5, 1.0) * math.cos(a), -r + r * rng.uniform(0.5, 1.0) * math.sin(a)) for a in angles])


def draw_bicycle(pen: Pen) -> None:
    rng = pen.rng
    r = rng.uniform(0.17, 0.24)
    back, front = -0.5 + r, 0.5 - r
    pen.filled = pen.filled and rng.random() < 0.5
    for x in (back, front):
        pen.circle((x, -r), r)
        if rng.random() < 0.5:
            pen.circle((x, -r), r * 0.15, solid=True)
    crank = (rng.uniform(-0.1, 0.05), -r)
    seat = (back + rng.uniform(0.15, 0.25), -r - rng.uniform(0.3, 0.45))
    bar = (front - rng.uniform(0.05, 0.12), seat[1] - rng.uniform(-0.05, 0.05))
    pen.line([(back, -r), crank, seat, (back, -r)])
    pen.line([crank, bar, (front, -r)])
    pen.line([seat, bar])
    pen.line([(seat[0] - 0.06, seat[1]), (seat[0] + 0.06, seat[1])], 1.5)
    pen.line([bar, (bar[0] + 0.04, bar[1] - 0.08)])


def draw_trailer(pen: Pen) -> None:
    """A low body on two wheels, without a cabin: everything of a car but the cabin and windows."""
    rng = pen.rng
    hb = rng.uniform(0.18, 0.35)
    c = rng.uniform(0.0, 0.06)
    pen.poly([(-0.45 + c, 0), (0.45 - c, 0), (0.45, -c), (0.45, -hb), (-0.45, -hb), (-0.45, -c)])
    if rng.random() < 0.6:  # a tow bar
        pen.line([(0.45, -0.05), (0.58, -0.05)], 1.2)
    if rng.random() < 0.3:  # a tarpaulin bow
        pen.line([(-0.4, -hb), (-0.3, -hb - 0.12), (0.3, -hb - 0.12), (0.4, -hb)], 0.8)
    r = rng.uniform(0.075, 0.12)
    _wheels(pen, (rng.uniform(-0.3, -0.2), rng.uniform(0.2, 0.3)), 0.0, r, hubs=rng.random() < 0.6)


def draw_wagon(pen: Pen) -> None:
    """A long box on three or four wheels, like a train wagon (no cabin)."""
    rng = pen.rng
    hb = rng.uniform(0.2, 0.38)
    pen.poly(_rect(-0.5, -hb, 0.5, 0))
    if rng.random() < 0.4:
        for k in range(rng.randint(2, 4)):
            pen.line([(-0.4 + 0.25 * k, -hb + 0.04), (-0.4 + 0.25 * k, -0.04)], 0.7)
    n = rng.randint(3, 4)
    r = rng.uniform(0.06, 0.09)
    _wheels(pen, [-0.4 + 0.8 * k / (n - 1) for k in range(n)], 0.0, r, hubs=rng.random() < 0.5)


def draw_cart(pen: Pen) -> None:
    """A box taller than wide on two wheels, with a handle."""
    rng = pen.rng
    w, h = rng.uniform(0.35, 0.55), rng.uniform(0.6, 0.95)
    pen.poly(_rect(-w / 2, -h, w / 2, -0.05))
    pen.line([(w / 2, -h + 0.1), (w / 2 + 0.15, -h - 0.05)])
    r = rng.uniform(0.08, 0.13)
    _wheels(pen, (-w / 2 + r, w / 2 - r), -0.02, r, hubs=rng.random() < 0.5)


def draw_snowman(pen: Pen) -> None:
    rng = pen.rng
    r1 = rng.uniform(0.25, 0.35)
    r2 = r1 * rng.uniform(0.6, 0.8)
    r3 = r2 * rng.uniform(0.6, 0.8)
    white = (rng.randint(220, 255),) * 3
    pen.circle((0, -r1), r1, white)
    pen.circle((0, -2 * r1 - r2 * 0.8), r2, white)
    pen.circle((0, -2 * r1 - 1.6 * r2 - r3 * 0.8), r3, white)
    if rng.random() < 0.5:
        for k in range(3):
            pen.circle((0, -2 * r1 - r2 * (0.4 + 0.4 * k)), 0.025, (20, 20, 20), solid=True)


def draw_face(pen: Pen) -> None:
    rng = pen.rng
    r = rng.uniform(0.3, 0.45)
    pen.circle((0, -r), r)
    eye = r * rng.uniform(0.1, 0.2)
    for s in (-1, 1):
        pen.circle((s * r * 0.38, -r * 1.3), eye, (30, 30, 30), solid=True)
    mouth = [(r * 0.5 * math.cos(a), -r * 0.75 + r * 0.25 * math.sin(a)) for a in np.linspace(0.2, math.pi - 0.2, 8)]
    pen.line(mouth)


def draw_traffic_light(pen: Pen) -> None:
    rng = pen.rng
    w = rng.uniform(0.2, 0.3)
    h = w * 3.2
    pole = rng.uniform(0.1, 0.4)
    pen.line([(0, 0), (0, -pole)], 1.5)
    pen.poly(_rect(-w / 2, -pole - h, w / 2, -pole), (rng.randint(0, 60),) * 3)
    for k, c in enumerate([(230, 30, 30), (240, 200, 20), (30, 200, 60)]):
        pen.circle((0, -pole - h + w * (0.55 + 1.05 * k)), w * 0.38, c, solid=rng.random() < 0.5)


DRAWERS: dict[str, Callable[[Pen], None]] = {
    "car": draw_car,
    "house": draw_house,
    "tree": draw_tree,
    "circles": draw_circles,
    "star": draw_star,
    "boat": draw_boat,
    "polygon": draw_polygon,
    "bicycle": draw_bicycle,
    "trailer": draw_trailer,
    "wagon": draw_wagon,
    "cart": draw_cart,
    "snowman": draw_snowman,
    "face": draw_face,
    "traffic_light": draw_traffic_light,
}
# Extent of each drawing in object units (x from -0.5 to 0.5 for the wide ones; y up from 0 to -height).
HEIGHTS: dict[str, float] = {
    "car": 0.6,
    "house": 1.35,
    "tree": 1.3,
    "circles": 0.9,
    "star": 1.0,
    "boat": 1.05,
    "polygon": 1.0,
    "bicycle": 0.95,
    "trailer": 0.5,
    "wagon": 0.45,
    "cart": 1.05,
    "snowman": 1.5,
    "face": 0.9,
    "traffic_light": 1.4,
}


def _distractors(draw: ImageDraw.ImageDraw, rng: random.Random, bg: Colour, size: int) -> None:
    """Things that show up in either class, so that none of them tells the class."""
    if rng.random() < 0.25:  # a sun
        r = rng.uniform(0.05, 0.1) * size
        cx, cy = rng.choice([r + 4, size - r - 4]), rng.uniform(r + 4, size * 0.3)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_contrasting(rng, bg, 120))
    for _ in range(rng.choice([0, 0, 0, 1, 2])):  # scribbles
        pts = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(rng.randint(2, 4))]
        draw.line(pts, fill=_contrasting(rng, bg, 100), width=rng.randint(1, 3) * SUPERSAMPLE)


def draw_image(kind: str, rng: random.Random, nrng: np.random.Generator) -> Image.Image:
    """One 128x128 RGB drawing of KIND ("car" or one of OTHER_KINDS)."""
    size = IMAGE_SIZE * SUPERSAMPLE
    bg: Colour = (
        _colour(rng) if rng.random() < 0.5 else (rng.randint(200, 255), rng.randint(200, 255), rng.randint(200, 255))
    )
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    _distractors(draw, rng, bg, size)

    angle = math.radians(rng.uniform(-10.0, 10.0))
    extent = max(1.0, HEIGHTS[kind])  # the larger of width (1 unit) and height
    scale = rng.uniform(0.45, 0.85) * size / extent
    half_w, height = 0.5 * scale * 1.15, HEIGHTS[kind] * scale
    margin = 0.06 * size
    ox = rng.uniform(margin + half_w, size - margin - half_w) if size - 2 * (margin + half_w) > 0 else size / 2
    low, high = margin + height, size - margin
    oy = rng.uniform(low, high) if high > low else (size + height) / 2
    if rng.random() < 0.4:  # a ground line at the drawing's foot
        draw.line([(0, oy + 2), (size, oy + 2)], fill=_contrasting(rng, bg, 100), width=rng.randint(1, 3) * SUPERSAMPLE)
    pen = Pen(draw, rng, bg, scale=scale, origin=(ox, oy), angle=angle, mirror=rng.random() < 0.5)
    DRAWERS[kind](pen)

    small = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    arr = np.asarray(small, dtype=np.float32)
    sigma = rng.uniform(0.0, 12.0)
    arr = arr + nrng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def make_dataset(per_class: int, seed: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], list[str]]:
    """PER_CLASS cars and PER_CLASS others (kinds in turn), shuffled: (uint8 NHWC images, labels, kinds)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not crypto
    nrng = np.random.default_rng(seed)
    images = np.empty((2 * per_class, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.empty(2 * per_class, dtype=np.int64)
    kinds: list[str] = []
    for i in range(per_class):
        for j, kind in enumerate(("car", OTHER_KINDS[i % len(OTHER_KINDS)])):
            images[2 * i + j] = np.asarray(draw_image(kind, rng, nrng))
            labels[2 * i + j] = 0 if kind == "car" else 1
            kinds.append(kind)
    order = nrng.permutation(len(labels))
    return images[order], labels[order], [kinds[k] for k in order]


# ---------------------------------------------------------------- model


def build_model(keras: Any, decay_steps: int) -> Any:
    """Small CNN: 5 x (Conv2D 3x3, BatchNorm, ReLU, MaxPool 2x2), max over the 4x4 map, Dense 32, Dense 2.

    Every layer maps to a TFLite builtin at version 1: CONV_2D (BatchNorm folded into its
    weights, ReLU fused), MAX_POOL_2D, FULLY_CONNECTED (the Flatten is folded into it), SOFTMAX.
    Adam with a cosine-decayed learning rate, so the last epoch is a calm one.
    """
    layers = keras.layers
    stack: list[Any] = [layers.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name="image")]
    for filters in (16, 24, 32, 48, 64):
        stack += [
            layers.Conv2D(filters, 3, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.9),
            layers.ReLU(),
            layers.MaxPooling2D(2),
        ]
    stack += [
        # The 4x4 map -> 1x1, a global max: a small car in a corner counts as much as a big one
        # (an average would dilute it with the empty background around it).
        layers.MaxPooling2D(IMAGE_SIZE // 32),
        layers.Flatten(),
        layers.Dropout(0.2),
        layers.Dense(32, activation="relu"),
        layers.Dense(len(LABELS), activation="softmax"),
    ]
    model = keras.Sequential(stack, name="car_or_not")
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, decay_steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def tflite_predict(tf: Any, model_path: Path, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Softmax outputs of a .tflite model, one image at a time (as on the Pi)."""
    interp = tf.lite.Interpreter(model_path=str(model_path), num_threads=2)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    probs = np.empty((len(images), len(LABELS)), dtype=np.float32)
    for i, image in enumerate(images):
        interp.set_tensor(inp["index"], (image.astype(np.float32) / np.float32(255.0))[None])
        interp.invoke()
        probs[i] = interp.get_tensor(out["index"])[0]
    return probs


def _accuracy_report(pred: npt.NDArray[np.int64], y: npt.NDArray[np.int64], kinds: list[str]) -> dict[str, Any]:
    per_kind: dict[str, dict[str, float | int]] = {}
    for kind in ["car", *OTHER_KINDS]:
        mask = np.asarray([k == kind for k in kinds])
        if mask.any():
            per_kind[kind] = {"images": int(mask.sum()), "accuracy": round(float((pred[mask] == y[mask]).mean()), 4)}
    confusion = [[int(((y == t) & (pred == p)).sum()) for p in range(len(LABELS))] for t in range(len(LABELS))]
    return {
        "images": len(y),
        "accuracy": round(float((pred == y).mean()), 4),
        "per_class": {
            label: round(float((pred[y == i] == i).mean()), 4) for i, label in enumerate(LABELS) if (y == i).any()
        },
        "confusion_rows_true_cols_predicted": confusion,
        "per_kind": per_kind,
    }


def write_samples(samples_dir: Path, count: int, seed: int) -> list[Path]:
    """COUNT held-out cars and COUNT others (kinds from SAMPLE_OTHER_KINDS), drawn from their own seed."""
    samples_dir.mkdir(parents=True, exist_ok=True)
    for old in samples_dir.glob("*.png"):
        old.unlink()
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not crypto
    nrng = np.random.default_rng(seed)
    paths = []
    for n in range(1, count + 1):
        for label, kind in (("car", "car"), ("other", SAMPLE_OTHER_KINDS[(n - 1) % len(SAMPLE_OTHER_KINDS)])):
            path = samples_dir / f"{label}_{n}.png"
            draw_image(kind, rng, nrng).save(path, optimize=True)
            paths.append(path)
    return sorted(paths)


def data_seeds(seed: int, epochs: int) -> dict[str, Any]:
    """Seeds of every generated set: one per training epoch, validation, held-out test, samples."""
    return {
        "held_out": seed + 1,
        "samples": seed + 2,
        "validation": seed + 3,
        "train": [seed * 1000 + 100 + e for e in range(epochs)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Generate the drawings, train the 'is this drawing a car?' CNN, export car.tflite.",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=HERE, help="car.tflite, labels.txt, samples/, metrics (%(default)s)"
    )
    parser.add_argument("--work-dir", type=Path, default=REPO / "build" / "model", help="car.keras (%(default)s)")
    parser.add_argument("--seed", type=int, default=1234, help="base of every data seed (%(default)s)")
    parser.add_argument(
        "--train-per-class", type=int, default=1500, help="training images per class, new ones each epoch (%(default)s)"
    )
    parser.add_argument("--val-per-class", type=int, default=150, help="validation images per class (%(default)s)")
    parser.add_argument("--test-per-class", type=int, default=500, help="held-out images per class (%(default)s)")
    parser.add_argument("--samples-per-class", type=int, default=3, help="sample PNGs per class (%(default)s)")
    parser.add_argument("--epochs", type=int, default=15, help="(%(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="(%(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads (%(default)s)")
    args = parser.parse_args(argv)

    from pibake.convert import keras as converter
    from pibake.errors import ToolMissing

    try:
        tf = converter.import_tensorflow()
    except ToolMissing as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return e.exit_code
    keras = tf.keras

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    seeds = data_seeds(args.seed, args.epochs)
    t0 = time.monotonic()
    x_val, y_val, _ = make_dataset(args.val_per_class, seeds["validation"])
    x_test, y_test, test_kinds = make_dataset(args.test_per_class, seeds["held_out"])
    generate_s = time.monotonic() - t0
    print(f"generated {len(y_val)} validation and {len(y_test)} held-out images in {generate_s:.1f}s", flush=True)

    steps_per_epoch = math.ceil(2 * args.train_per_class / args.batch_size)
    model = build_model(keras, steps_per_epoch * args.epochs)
    model.summary()
    x_val_f = x_val.astype(np.float32) / np.float32(255.0)
    history: dict[str, list[float]] = {}
    train_s = 0.0
    for epoch, seed in enumerate(seeds["train"]):
        # A fresh training set every epoch: the generator is cheap, and no drawing is seen twice.
        t0 = time.monotonic()
        x_train, y_train, _ = make_dataset(args.train_per_class, seed)
        generate_s += time.monotonic() - t0
        t0 = time.monotonic()
        fit = model.fit(
            x_train.astype(np.float32) / np.float32(255.0),
            y_train,
            initial_epoch=epoch,
            epochs=epoch + 1,
            batch_size=args.batch_size,
            validation_data=(x_val_f, y_val),
            shuffle=True,
            verbose=2,
        )
        train_s += time.monotonic() - t0
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
    print(f"training took {train_s:.1f}s (+ {generate_s:.1f}s generating images)", flush=True)

    x_test_f = x_test.astype(np.float32) / np.float32(255.0)
    keras_pred = np.argmax(model.predict(x_test_f, batch_size=64, verbose=0), axis=1)
    keras_report = _accuracy_report(keras_pred, y_test, test_kinds)
    print(f"Keras held-out accuracy: {keras_report['accuracy']:.4f} ({len(y_test)} images)", flush=True)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    keras_path = args.work_dir / "car.keras"
    model.save(keras_path)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tflite_path = out_dir / "car.tflite"
    t0 = time.monotonic()
    conversion = converter.convert(keras_path, tflite_path)
    convert_s = time.monotonic() - t0
    print(conversion.text(), flush=True)
    (out_dir / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")

    lite_probs = tflite_predict(tf, tflite_path, x_test)
    lite_report = _accuracy_report(np.argmax(lite_probs, axis=1), y_test, test_kinds)
    print(f"TFLite held-out accuracy: {lite_report['accuracy']:.4f} ({len(y_test)} images)")
    print("per kind:", ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in lite_report["per_kind"].items()))

    samples = write_samples(out_dir / "samples", args.samples_per_class, seeds["samples"])
    sample_images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in samples])
    sample_probs = tflite_predict(tf, tflite_path, sample_images)
    ok = True
    sample_results = []
    for path, probs in zip(samples, sample_probs, strict=True):
        expected = path.stem.rsplit("_", 1)[0]
        best = int(np.argmax(probs))
        good = LABELS[best] == expected and float(probs[best]) > 0.9
        ok = ok and good
        sample_results.append({"image": path.name, "label": LABELS[best], "probability": round(float(probs[best]), 4)})
        print(f"sample {path.name}: {LABELS[best]} {probs[best]:.4f}{'' if good else '  <-- WRONG or unsure'}")

    metrics = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "seeds": seeds,
        "training": {
            "images_per_epoch": 2 * args.train_per_class,
            "images_seen": 2 * args.train_per_class * args.epochs,
            "validation_images": len(y_val),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "final_train_accuracy": round(float(history["accuracy"][-1]), 4),
            "final_val_accuracy": round(float(history["val_accuracy"][-1]), 4),
            "generate_seconds": round(generate_s, 1),
            "train_seconds": round(train_s, 1),
            "convert_seconds": round(convert_s, 1),
        },
        "parameters": int(model.count_params()),
        "tflite": {
            "bytes": conversion.size,
            "ops": [f"{name} v{version}" for name, version in conversion.ops],
            "min_runtime_version": conversion.min_runtime_version,
            "max_abs_diff_keras_tflite_random_input": conversion.max_abs_diff,
        },
        "held_out_keras": keras_report,
        "held_out_tflite": lite_report,
        "samples": sample_results,
    }
    (out_dir / "car_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {tflite_path}, {out_dir / 'labels.txt'}, {len(samples)} samples, {out_dir / 'car_metrics.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
