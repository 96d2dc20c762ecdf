"""Discriminative baselines: tiny runs on scikit-learn digits that pin behaviour (CPU, seconds)."""
import numpy as np
import pytest
import torch

from sgc import baselines as B
from sgc import metrics as M
from sgc.data import ImageSet, load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", val_size=0.2)


def three_vs_eight(s: ImageSet, n: int) -> ImageSet:
    """First n images of digits 3 and 8 as a binary set (positive = 8)."""
    i = np.flatnonzero(np.isin(s.labels, [3, 8]))[:n]
    return ImageSet(s.images[i], (s.labels[i] == 8).astype(np.int64), ("3", "8"), s.levels)


def test_logreg_on_digits(digits):
    model, history = B.train_baseline("logreg", digits["train"], digits["val"],
                                      c_grid=(0.1, 1.0), progress=False)
    proba = B.predict_proba(model, digits["test"].images)
    assert proba.shape == (len(digits["test"]), 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    assert M.accuracy(digits["test"].labels, proba) > 0.9
    assert [h["C"] for h in history] == [0.1, 1.0]
    assert sum(h["best"] for h in history) == 1
    best = next(h for h in history if h["best"])
    assert model.C == best["C"]
    assert best["val_auc"] == max(h["val_auc"] for h in history)


def test_resnet_early_stopping_restores_best_epoch(digits):
    train, val = three_vs_eight(digits["train"], 24), three_vs_eight(digits["val"], 24)
    # a large learning rate on 24 images makes the validation loss worse after epoch 0
    model, history = B.train_baseline("resnet18", train, val, epochs=3, batch_size=12, lr=3e-3,
                                      augment_flips=False, patience=5, monitor="loss",
                                      progress=False)
    assert len(history) == 3 and sum(h["best"] for h in history) == 1
    best = next(h for h in history if h["best"])
    assert best["val_loss"] == min(h["val_loss"] for h in history)
    assert not history[-1]["best"]
    proba = B.predict_proba(model, val.images, batch_size=7)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    assert not model.training
    # the returned weights reproduce the best epoch's validation scores, not the last's
    scores = B._val_scores(val.labels, proba)
    assert scores["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert scores["val_auc"] == pytest.approx(best["val_auc"], abs=1e-9)
    assert scores["val_loss"] != pytest.approx(history[-1]["val_loss"], rel=1e-3)


def test_patience_stops_training(digits, monkeypatch):
    train, val = three_vs_eight(digits["train"], 12), three_vs_eight(digits["val"], 12)
    # scripted validation losses: best at epoch 1, then two epochs without improvement
    losses = iter([1.0, 0.5, 0.6, 0.7, 0.1, 0.1])
    monkeypatch.setattr(B, "_val_scores", lambda y, p: {
        "val_loss": next(losses), "val_auc": 0.5, "val_accuracy": 0.5,
        "val_balanced_accuracy": 0.5})
    _, history = B.train_baseline("resnet18", train, val, epochs=6, batch_size=12,
                                  augment_flips=False, patience=1, monitor="loss",
                                  progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert [h["best"] for h in history] == [False, True, False, False]


def test_densenet_small_images_and_seeded_runs(digits):
    # 8x8 images are resized to 32x32 inside the network; one optimisation step per run
    train, val = three_vs_eight(digits["train"], 12), three_vs_eight(digits["val"], 16)
    runs = [B.train_baseline("densenet121", train, val, epochs=1, batch_size=12, seed=3,
                             progress=False) for _ in range(2)]
    (model, history), (_, history2) = runs
    proba = B.predict_proba(model, val.images)
    assert proba.shape == (16, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    assert history[0]["train_loss"] == pytest.approx(history2[0]["train_loss"], rel=1e-5)
    assert history[0]["val_loss"] == pytest.approx(history2[0]["val_loss"], rel=1e-5)


def test_build_network_shapes():
    net = B.build_network("resnet18", in_channels=3, n_classes=4, image_size=28)
    assert net(torch.zeros(2, 3, 28, 28)).shape == (2, 4)
    with pytest.raises(ValueError, match="unknown network"):
        B.build_network("vgg", 1, 2, 28)


def test_flips_are_flips():
    # every output is one of the four flips of its input, and every flip really occurs
    x = torch.arange(64 * 1 * 3 * 3, dtype=torch.float32).reshape(64, 1, 3, 3)
    y = B._flip(x, torch.Generator().manual_seed(0))
    seen = []
    for a, b in zip(x, y):
        kinds = [k for k, c in enumerate((a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2))) if torch.equal(b, c)]
        assert len(kinds) == 1
        seen += kinds
    assert all(seen.count(k) >= 5 for k in range(4)), [seen.count(k) for k in range(4)]


def test_clear_errors(digits):
    train, val = three_vs_eight(digits["train"], 20), three_vs_eight(digits["val"], 20)
    with pytest.raises(ValueError, match="unknown baseline"):
        B.train_baseline("vit", train, val)
    other = ImageSet(val.images, val.labels, ("a", "b"))
    with pytest.raises(ValueError, match="class_names differ"):
        B.train_baseline("logreg", train, other)
    one = ImageSet(val.images[val.labels == 0], val.labels[val.labels == 0], val.class_names)
    with pytest.raises(ValueError, match="no images of class"):
        B.train_baseline("logreg", train, one)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        B.predict_proba(None, np.zeros((3, 8, 8)))
