"""Synthetic text-to-video data: one coloured shape moving over a plain background, with a caption.

Everything is generated in code from a seed, on any device: captions come from a small grammar
(``"a red circle moving right"``, ``"a blue square moves up slowly"``), videos are rendered with
anti-aliased signed distances. A fixed, balanced set of (colour, shape, direction) combinations is
held out: the model never sees them in training and the judge scores it on them.

Videos are ``[B, 3, F, H, W]`` float in ``[0, 1]`` (diffusers' video layout), ``y`` grows downwards.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..errors import SettingsError

__all__ = ["PALETTE", "BACKGROUND", "SHAPES", "DIRECTIONS", "SPEEDS", "VOCAB", "Caption", "caption_text",
           "parse_caption", "ALL_TRIPLES", "HELDOUT_TRIPLES", "TRAIN_TRIPLES", "all_captions", "sample_captions",
           "heldout_captions", "render"]

# Colours far apart in RGB (pairwise distance >= 0.7) so the judge's nearest-palette rule is robust.
PALETTE = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.35, 1.00),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.85, 0.20, 0.85),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND = (0.08, 0.08, 0.08)
SHAPES = ("circle", "square", "triangle")
# Unit displacement per direction in (x, y) pixels, y downwards.
DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# Total travel over the clip as a fraction of the frame side ("" = the default pace).
SPEEDS = {"slowly": 0.2, "": 0.32, "quickly": 0.45}
VERBS = ("moving", "moves")
VOCAB = ["<pad>", "</s>", "<unk>", "a", *PALETTE, *SHAPES, *VERBS, *DIRECTIONS, *(s for s in SPEEDS if s)]


@dataclass(frozen=True)
class Caption:
    """One prompt's meaning: what the judge checks (colour, shape, direction) plus speed and wording."""

    color: str
    shape: str
    direction: str
    speed: str = ""
    verb: str = "moving"

    @property
    def text(self) -> str:
        return caption_text(self.color, self.shape, self.direction, self.speed, self.verb)

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.color, self.shape, self.direction)


def caption_text(color: str, shape: str, direction: str, speed: str = "", verb: str = "moving") -> str:
    """The grammar: ``a <colour> <shape> <moving|moves> <direction> [slowly|quickly]``."""
    return " ".join(w for w in ("a", color, shape, verb, direction, speed) if w)


def parse_caption(text: str) -> Caption:
    """Inverse of :func:`caption_text` (any word order; unknown words ignored). Raises if an attribute is missing."""
    words = text.lower().replace(",", " ").split()

    def pick(options, what, default=None):
        found = [w for w in words if w in options]
        if not found:
            if default is not None:
                return default
            raise SettingsError(f"caption {text!r} names no {what} (one of {sorted(o for o in options if o)})")
        return found[0]

    return Caption(pick(PALETTE, "colour"), pick(SHAPES, "shape"), pick(DIRECTIONS, "direction"),
                   pick(SPEEDS, "speed", ""), pick(VERBS, "verb", "moving"))


ALL_TRIPLES = tuple(itertools.product(PALETTE, SHAPES, DIRECTIONS))  # 6 x 3 x 4 = 72
# Held out: 12 triples chosen so every colour (2x), shape (4x) and direction (3x) still occurs, and
# every held-out triple's colour+shape, colour+direction and shape+direction pairs occur in training.
_C, _D = list(PALETTE), list(DIRECTIONS)
HELDOUT_TRIPLES = tuple((_C[i % 6], SHAPES[(i + 1) % 3], _D[(i + 2) % 4]) for i in range(12))
TRAIN_TRIPLES = tuple(t for t in ALL_TRIPLES if t not in HELDOUT_TRIPLES)


def all_captions(split: str = "train") -> list[Caption]:
    """Every caption (all speeds and verbs) of the ``"train"``, ``"heldout"`` or ``"all"`` triples."""
    triples = {"train": TRAIN_TRIPLES, "heldout": HELDOUT_TRIPLES, "all": ALL_TRIPLES}[split]
    return [Caption(c, s, d, sp, v) for (c, s, d) in triples for sp in SPEEDS for v in VERBS]


def heldout_captions() -> list[Caption]:
    """The evaluation prompts: each held-out triple at each speed, one wording (12 x 3 = 36)."""
    return [Caption(c, s, d, sp) for (c, s, d) in HELDOUT_TRIPLES for sp in SPEEDS]


def sample_captions(n: int, generator: torch.Generator | None = None, split: str = "train") -> list[Caption]:
    """``n`` captions drawn uniformly (with replacement) from :func:`all_captions` of ``split``."""
    pool = all_captions(split)
    idx = torch.randint(len(pool), (n,), generator=generator)
    return [pool[i] for i in idx.tolist()]


def _sdf(shape_ids: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Signed distance in pixels (negative inside) of each sample's shape; ``dx, dy`` are offsets from
    the centre ``[B, F, H, W]``, ``half`` the half-extent ``[B, 1, 1, 1]``. Triangles point up and fill
    half of their bounding box, circles 78.5%, squares all of it."""
    circle = torch.sqrt(dx * dx + dy * dy) - half
    square = torch.maximum(dx.abs(), dy.abs()) - half
    k = 1 / math.sqrt(5.0)  # the slanted edges have outward normals (+-2, -1)/sqrt(5)
    tri = torch.maximum(dy - half, torch.maximum((-2 * (dx + half) - (dy - half)) * k, (2 * (dx - half) - (dy - half)) * k))
    sid = shape_ids.view(-1, 1, 1, 1)
    return torch.where(sid == 0, circle, torch.where(sid == 1, square, tri))


def render(captions: list[Caption], num_frames: int = 17, size: int = 32, generator: torch.Generator | None = None,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """Render one video per caption -> ``[B, 3, num_frames, size, size]`` float32 in ``[0, 1]``.

    Random per video (from ``generator``, a CPU generator): the shape's half-extent (13-20% of the
    side), its start position (the whole path stays inside the frame), a small colour jitter (+-0.05).
    The shape moves in a straight line at constant speed ``SPEEDS[speed] * size`` pixels per clip.
    """
    b = len(captions)
    if b == 0:
        raise SettingsError("render needs at least one caption")
    g = generator
    half = (0.13 + 0.07 * torch.rand(b, generator=g)) * size
    travel = torch.tensor([SPEEDS[c.speed] for c in captions]) * size
    d = torch.tensor([DIRECTIONS[c.direction] for c in captions])  # [B, 2]
    margin = half + 1.0
    # Along the motion axis the start leaves room for the whole travel; across it, anywhere inside.
    lo, hi = margin, size - margin
    along0 = lo + torch.rand(b, generator=g) * (hi - lo - travel).clamp(min=0)
    across = lo + torch.rand(b, generator=g) * (hi - lo)
    horizontal = d[:, 0] != 0
    sign = d.sum(1)  # +1 right/down, -1 left/up
    start_along = torch.where(sign > 0, along0, size - along0)
    cx0 = torch.where(horizontal, start_along, across)
    cy0 = torch.where(horizontal, across, start_along)
    color = torch.tensor([PALETTE[c.color] for c in captions])
    color = (color + (torch.rand(b, 3, generator=g) - 0.5) * 0.1).clamp(0, 1)
    shape_ids = torch.tensor([SHAPES.index(c.shape) for c in captions])

    dev = torch.device(device)
    half, travel, d, cx0, cy0, color, shape_ids = (t.to(dev) for t in (half, travel, d, cx0, cy0, color, shape_ids))
    t = torch.linspace(0, 1, num_frames, device=dev)  # [F]
    cx = cx0[:, None] + d[:, 0:1] * travel[:, None] * t  # [B, F]
    cy = cy0[:, None] + d[:, 1:2] * travel[:, None] * t
    pix = torch.arange(size, device=dev, dtype=torch.float32) + 0.5  # pixel centres
    dx = pix.view(1, 1, 1, size) - cx[:, :, None, None]  # [B, F, 1, W]
    dy = pix.view(1, 1, size, 1) - cy[:, :, None, None]  # [B, F, H, 1]
    dx, dy = torch.broadcast_tensors(dx, dy)
    alpha = (0.5 - _sdf(shape_ids, dx, dy, half.view(-1, 1, 1, 1))).clamp(0, 1)  # 1-pixel anti-aliasing
    bg = torch.tensor(BACKGROUND, device=dev).view(1, 3, 1, 1, 1)
    fg = color.view(b, 3, 1, 1, 1)
    a = alpha[:, None]  # [B, 1, F, H, W]
    return bg * (1 - a) + fg * a
