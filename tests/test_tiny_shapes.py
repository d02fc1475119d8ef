"""The synthetic moving-shapes dataset: grammar, held-out split, rendering."""
import itertools

import pytest
import torch

from q8lib.tiny import shapes
from q8lib.tiny import make_tiny_tokenizer


def test_grammar_roundtrip_and_vocab():
    caps = shapes.all_captions("all")
    assert len(caps) == 72 * 3 * 2  # triples x speeds x verbs
    tok = make_tiny_tokenizer(max_length=128, vocab=shapes.VOCAB)
    unk = tok.convert_tokens_to_ids("<unk>")
    for c in caps:
        assert shapes.parse_caption(c.text) == c
        assert unk not in tok(c.text).input_ids, c.text
    assert shapes.caption_text("red", "circle", "right") == "a red circle moving right"
    assert shapes.parse_caption("A Blue square moves UP slowly").triple == ("blue", "square", "up")
    with pytest.raises(ValueError, match="colour"):
        shapes.parse_caption("a circle moving right")


def test_heldout_split_is_balanced_and_compositional():
    held, train = set(shapes.HELDOUT_TRIPLES), set(shapes.TRAIN_TRIPLES)
    assert len(held) == 12 and not held & train and held | train == set(shapes.ALL_TRIPLES)
    for c, s, d in held:
        # Every attribute pair of a held-out triple is seen in training; the triple itself never is.
        assert any(t[:2] == (c, s) for t in train)
        assert any((t[0], t[2]) == (c, d) for t in train)
        assert any(t[1:] == (s, d) for t in train)
    for i, values in enumerate((shapes.PALETTE, shapes.SHAPES, shapes.DIRECTIONS)):
        counts = {v: sum(t[i] == v for t in held) for v in values}
        assert len(set(counts.values())) == 1, counts  # balanced: 2 per colour, 4 per shape, 3 per direction
    assert all(c.triple in held for c in shapes.heldout_captions())
    assert all(c.triple in train for c in shapes.sample_captions(200, torch.Generator().manual_seed(0)))


def test_render_is_seeded_and_in_range():
    caps = shapes.sample_captions(8, torch.Generator().manual_seed(1), "all")
    a = shapes.render(caps, 9, 32, torch.Generator().manual_seed(3))
    b = shapes.render(caps, 9, 32, torch.Generator().manual_seed(3))
    c = shapes.render(caps, 9, 32, torch.Generator().manual_seed(4))
    assert a.shape == (8, 3, 9, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # The shape never touches the border: border pixels are exactly the background.
    bg = torch.tensor(shapes.BACKGROUND).view(1, 3, 1, 1)
    for edge in (a[..., 0, :], a[..., -1, :], a[..., :, 0], a[..., :, -1]):
        assert torch.allclose(edge, bg.expand_as(edge))


@pytest.mark.parametrize("shape,fill", [("circle", 0.785), ("square", 1.0), ("triangle", 0.5)])
def test_render_area_matches_shape(shape, fill):
    caps = [shapes.Caption("white", shape, d) for d in shapes.DIRECTIONS]
    g = torch.Generator().manual_seed(0)
    v = shapes.render(caps, 5, 64, g)
    # Coverage (alpha) from the brightness; the bounding box is 2 * half-extent wide.
    alpha = (v.mean(1) - shapes.BACKGROUND[0]) / (0.95 - shapes.BACKGROUND[0])
    area = alpha.clamp(0, 1).sum((-1, -2))  # [B, F]
    g = torch.Generator().manual_seed(0)
    half = (0.13 + 0.07 * torch.rand(len(caps), generator=g)) * 64  # the renderer's first draw
    ratio = area / (2 * half[:, None]) ** 2
    # Colour jitter moves the brightness a few %; measured ratios 0.755-0.788, 0.962-1.004, 0.480-0.506.
    assert torch.allclose(ratio, torch.full_like(ratio, fill), atol=0.08), ratio


def test_motion_direction_and_speed():
    caps = [shapes.Caption("red", "square", d, sp) for d, sp in itertools.product(shapes.DIRECTIONS, shapes.SPEEDS)]
    v = shapes.render(caps, 17, 32, torch.Generator().manual_seed(0))
    w = (v[:, 0] - shapes.BACKGROUND[0]).clamp(min=0)  # red channel: the shape's weight [B, F, H, W]
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cx = (w * xs).sum((-1, -2)) / w.sum((-1, -2))
    cy = (w * ys).sum((-1, -2)) / w.sum((-1, -2))
    for i, c in enumerate(caps):
        ux, uy = shapes.DIRECTIONS[c.direction]
        travel = shapes.SPEEDS[c.speed] * 32
        assert (cx[i, -1] - cx[i, 0]).item() == pytest.approx(ux * travel, abs=0.05)
        assert (cy[i, -1] - cy[i, 0]).item() == pytest.approx(uy * travel, abs=0.05)
