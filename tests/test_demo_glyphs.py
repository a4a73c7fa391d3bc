"""Glyph rendering (zootune.data.glyphs): determinism, labels, look-alike merging, affine jitter."""

import pytest
import torch
import torch.nn.functional as F

from zootune.data import glyphs as G


def test_same_seed_same_samples_other_seed_differs():
    a = G.render_glyphs("0123456789", 6, seed=3)
    b = G.render_glyphs("0123456789", 6, seed=3)
    c = G.render_glyphs("0123456789", 6, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert a.x.shape == (60, 1, 16, 16) and a.x.dtype == torch.float32
    assert float(a.x.min()) >= 0.0 and float(a.x.max()) <= 1.0
    assert torch.equal(torch.bincount(a.y, minlength=10), torch.full((10,), 6))  # balanced


def test_unaugmented_sample_is_its_own_characters_bitmap():
    chars = "AB\u03b1\u0416+7"  # Latin, Greek, Cyrillic, symbol, digit
    s = G.render_glyphs(chars, 8, resolution=12, seed=0, augment=G.Augment.none())
    maps, owner = G.base_bitmaps(chars, 24)
    templates = F.avg_pool2d(maps.unsqueeze(1), 2)
    templates = templates / templates.amax(dim=(1, 2, 3), keepdim=True)
    for x, y in zip(s.x, s.y):
        d = (templates - x).abs().flatten(1).amax(1)
        assert int(owner[int(d.argmin())]) == int(y)  # the matching bitmap belongs to the label
        assert float(d.min()) < 1e-5


def test_labels_survive_augmentation():
    """Nearest clean template (over all fonts) recovers most labels of augmented digits."""
    chars = "0123456789"
    s = G.render_glyphs(chars, 30, seed=1)
    clean = G.render_glyphs(chars, 60, seed=2, augment=G.Augment.none())
    xs = F.normalize(s.x.flatten(1), dim=1)
    ts = F.normalize(clean.x.flatten(1), dim=1)
    pred = clean.y[(xs @ ts.T).argmax(1)]
    assert float((pred == s.y).float().mean()) > 0.6  # chance is 0.1
    shuffled = s.y[torch.randperm(len(s.y), generator=torch.Generator().manual_seed(0))]
    assert float((pred == shuffled).float().mean()) < 0.3


def test_distinct_chars_merges_only_look_alikes():
    assert G.distinct_chars("A\u0391\u0410B") == "AB"  # Latin A, Greek Alpha, Cyrillic A
    assert G.distinct_chars("0123456789") == "0123456789"


def test_scripts_render_in_some_font():
    for name, chars in G.SCRIPTS.items():
        assert chars, name
        for c in chars:
            assert G.available_fonts(c), (name, c)
    assert not set(G.GREEK_HELD_APART) & set(G.SCRIPTS["greek"])


def test_identity_affine_keeps_images_and_rejects_bad_input():
    x = torch.rand(3, 1, 8, 8)
    y = G.random_affine(x, torch.Generator().manual_seed(0), rotate=0.0, scale=(1.0, 1.0),
                        shear=0.0, translate=0.0)
    assert torch.allclose(x, y, atol=1e-5)
    with pytest.raises(ValueError):
        G.render_glyphs("AA", 2)
    with pytest.raises(ValueError):
        G.render_glyphs("\U0010fff0", 2)
