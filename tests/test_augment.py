"""Static affine augmentation: a zero map is the identity, a shift moves the image, labels follow."""
import numpy as np
import torch

from sgc.augment import affine_copies, random_affine


def test_zero_affine_is_the_identity_and_a_shift_moves_the_image():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 4] = 1.0
    g = torch.Generator().manual_seed(0)
    same = random_affine(x, g, max_rotate=0, max_scale=0, max_shift=0)
    assert torch.allclose(same, x, atol=1e-6)
    moved = random_affine(x.repeat(16, 1, 1, 1), g, max_rotate=0, max_scale=0, max_shift=2)
    centres = [(m[0] * torch.arange(8.0)[None, :]).sum() / m[0].sum() for m in moved]   # column of the mass
    assert max(abs(float(c) - 4) for c in centres) > 0.5                          # it moved
    assert max(abs(float(c) - 4) for c in centres) <= 2 + 1e-4                    # by at most 2 pixels
    assert moved.min() >= 0 and moved.max() <= 1


def test_affine_copies_append_after_the_originals():
    rng = np.random.default_rng(0)
    images = rng.random((5, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 0, 1, 1])
    x, y = affine_copies(images, labels, copies=2, seed=1)
    assert x.shape == (15, 1, 8, 8) and y.tolist() == labels.tolist() * 3
    assert np.array_equal(x[:5], images) and not np.allclose(x[5:10], images)
    x2, _ = affine_copies(images, labels, copies=2, seed=1)
    assert np.array_equal(x, x2)
