"""Discriminative baselines trained on exactly the arrays the generative classifier sees.

Three models, chosen by name:
- "densenet121": MONAI's 2-D DenseNet-121, from scratch (no pretrained download). Its stem
  and three transitions divide the side by 32, so images smaller than 32x32 are resized
  up (bilinear) to 32x32 inside the model; the input arrays themselves stay the same.
- "resnet18": MONAI's 2-D ResNet-18, from scratch. For images under 64 pixels a side the
  stem is a 3x3 stride-1 convolution without max-pooling (as the MedMNIST ResNet-18 (28)).
- "logreg": scikit-learn logistic regression on the flattened pixels, the floor.

Networks are trained with (optionally class-weighted) cross-entropy, AdamW, random
horizontal/vertical flips, and early stopping on the validation split: the returned model
holds the weights of the best validation epoch (highest AUC, ties to lower loss, or lowest
loss with ``monitor="loss"``). The test split is never touched here.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import metrics
from .data import ImageSet

__all__ = ["BASELINES", "build_network", "train_baseline", "predict_proba"]

BASELINES = ("densenet121", "resnet18", "logreg")


class _ResizeUp(nn.Module):
    """Bilinearly resize (B, C, H, W) inputs up to at least ``min_size`` a side, then run ``net``."""

    def __init__(self, net: nn.Module, min_size: int):
        super().__init__()
        self.net = net
        self.min_size = min_size   # smallest side in pixels the wrapped network accepts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            scale = self.min_size / min(h, w)
            size = (int(round(h * scale)), int(round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.net(x)


def build_network(name: str, in_channels: int, n_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised MONAI network mapping (B, C, H, W) images to (B, K) logits.

    name: "densenet121" or "resnet18"; image_size: the smaller side H of the inputs, pixels.
    """
    from monai.networks import nets
    if name == "densenet121":
        net = nets.DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_classes,
                               pretrained=False)
        return _ResizeUp(net, min_size=32)
    if name == "resnet18":
        small = image_size < 64
        return nets.resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=n_classes,
                             pretrained=False,
                             conv1_t_size=3 if small else 7,
                             conv1_t_stride=1 if small else 2,
                             no_max_pool=small)
    raise ValueError(f"unknown network {name!r}; choose 'densenet121' or 'resnet18' "
                     "(or 'logreg' in train_baseline)")


def _check_sets(train: ImageSet, val: ImageSet) -> int:
    if tuple(train.class_names) != tuple(val.class_names):
        raise ValueError(f"train and val class_names differ: {train.class_names} vs {val.class_names}")
    if train.shape != val.shape:
        raise ValueError(f"train images {train.shape} and val images {val.shape} differ in shape")
    k = len(train.class_names)
    counts = np.bincount(train.labels, minlength=k)
    if len(counts) > k or np.any(counts == 0):
        raise ValueError(f"every class needs training images; counts per class {counts.tolist()} "
                         f"for {train.class_names}")
    missing = sorted(set(range(k)) - set(np.unique(val.labels).tolist()))
    if missing:
        raise ValueError(f"the validation split has no images of class(es) {missing}: model "
                         "selection on AUC needs every class; use a stratified (grouped) "
                         "validation split")
    return k


def _val_scores(y: np.ndarray, proba: np.ndarray) -> dict:
    eps = 1e-12
    return {"val_loss": float(-np.mean(np.log(proba[np.arange(len(y)), y] + eps))),
            "val_auc": metrics.auc(y, proba),
            "val_accuracy": metrics.accuracy(y, proba),
            "val_balanced_accuracy": metrics.balanced_accuracy(y, proba)}


def _key(row: dict, monitor: str) -> tuple:
    """Sort key of a validation row: larger is better."""
    return (row["val_auc"], -row["val_loss"]) if monitor == "auc" else (-row["val_loss"],)


def _train_logreg(train: ImageSet, val: ImageSet, *, class_weighting: bool, seed: int,
                  c_grid, monitor: str, progress: bool):
    from sklearn.linear_model import LogisticRegression
    xt, xv = train.images.reshape(len(train), -1), val.images.reshape(len(val), -1)
    models, history = [], []
    for c in c_grid:
        t0 = time.time()
        model = LogisticRegression(C=c, class_weight="balanced" if class_weighting else None,
                                   max_iter=3000, random_state=seed)
        model.fit(xt, train.labels)
        models.append(model)
        history.append({"C": float(c), **_val_scores(val.labels, model.predict_proba(xv)),
                        "seconds": time.time() - t0, "best": False})
        if progress:
            print(f"logreg C={c:g}: val AUC {history[-1]['val_auc']:.4f} "
                  f"loss {history[-1]['val_loss']:.4f}")
    i = max(range(len(history)), key=lambda j: _key(history[j], monitor))
    history[i]["best"] = True
    best = models[i]
    return best, history


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    h = torch.rand(b, generator=gen, device=x.device) < 0.5
    v = torch.rand(b, generator=gen, device=x.device) < 0.5
    x = torch.where(h[:, None, None, None], x.flip(-1), x)
    return torch.where(v[:, None, None, None], x.flip(-2), x)


def train_baseline(name: str, train: ImageSet, val: ImageSet, *,
                   seed: int = 0,                  # seeds initialisation, shuffling and flips
                   epochs: int = 100,              # maximum passes over the training split
                   batch_size: int = 64,           # images per optimisation step
                   lr: float = 1e-3,               # AdamW learning rate
                   weight_decay: float = 1e-4,     # AdamW decoupled weight decay
                   class_weighting: bool = True,   # loss weights N / (K n_k) ("balanced")
                   augment_flips: bool = True,     # random horizontal and vertical flips
                   patience: int = 10,             # epochs without improvement before stopping
                   monitor: str = "auc",           # "auc" (ties to lower loss) or "loss"
                   c_grid=(0.01, 0.1, 1.0, 10.0),  # logreg only: inverse L2 strengths tried on val
                   device=None,                    # torch device; default cuda if available
                   progress: bool = True):         # print one line per epoch
    """Train one baseline with early stopping on ``val``; return (model, history).

    train, val: ImageSet with images float32 (N, C, H, W) in [0, 1] and labels in [0, K).
    The model is an ``nn.Module`` in eval mode holding the best validation epoch's weights
    (for "logreg" a fitted ``LogisticRegression`` whose C in ``c_grid`` was chosen on val by
    the same ``monitor``; the network-only arguments are then ignored). history: one dict per
    epoch (per C for logreg) with train_loss, val_loss (unweighted NLL, nats), val_auc
    (positive-class AUC for K = 2, macro one-vs-rest otherwise), val_accuracy,
    val_balanced_accuracy, seconds and ``best`` (True on the epoch whose weights are returned).
    """
    k = _check_sets(train, val)
    if monitor not in ("auc", "loss"):
        raise ValueError(f"monitor must be 'auc' or 'loss'; got {monitor!r}")
    if name == "logreg":
        return _train_logreg(train, val, class_weighting=class_weighting, seed=seed,
                             c_grid=c_grid, monitor=monitor, progress=progress)
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2; got {epochs}, {batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    c, h, _ = train.shape
    model = build_network(name, c, k, h).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    counts = np.bincount(train.labels, minlength=k)
    weight = torch.tensor(len(train) / (k * counts) if class_weighting else np.ones(k),
                          dtype=torch.float32, device=device)
    x_all = torch.from_numpy(train.images)   # stays in host memory; batches move to device
    y_all = torch.from_numpy(train.labels)
    gen = torch.Generator(device=device).manual_seed(seed)
    perm_gen = torch.Generator().manual_seed(seed)

    history, best_key, best_state, since_best = [], None, None, 0
    for epoch in range(epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(train), generator=perm_gen)
        total, seen = 0.0, 0
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            if len(idx) < 2:      # BatchNorm cannot train on a single image
                continue
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            if augment_flips:
                x = _flip(x, gen)
            loss = F.cross_entropy(model(x), y, weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(idx)
            seen += len(idx)
        proba = predict_proba(model, val.images, batch_size=max(batch_size, 256), device=device)
        row = {"epoch": epoch, "train_loss": total / max(seen, 1), **_val_scores(val.labels, proba),
               "seconds": time.time() - t0, "best": False}
        if best_key is None or _key(row, monitor) > best_key:
            best_key, since_best = _key(row, monitor), 0
            best_state = {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}
            for r in history:
                r["best"] = False
            row["best"] = True
        else:
            since_best += 1
        history.append(row)
        if progress:
            print(f"{name} epoch {epoch}: train loss {row['train_loss']:.4f} val loss "
                  f"{row['val_loss']:.4f} AUC {row['val_auc']:.4f} acc {row['val_accuracy']:.4f}"
                  f"{' *' if row['best'] else ''} ({row['seconds']:.1f} s)")
        if since_best > patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, history


@torch.no_grad()
def predict_proba(model, images: np.ndarray, batch_size: int = 256, device=None) -> np.ndarray:
    """Class probabilities float64 (N, K), rows summing to 1, for images (N, C, H, W) in [0, 1].

    ``model``: a network from ``train_baseline`` (softmax of its logits, eval mode) or the
    fitted logistic regression.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {images.shape}")
    if not isinstance(model, nn.Module):
        proba = model.predict_proba(images.reshape(len(images), -1).astype(np.float64))
        return proba / proba.sum(axis=1, keepdims=True)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).to(device)
        proba = torch.softmax(model(x).double(), dim=1).cpu().numpy()
        out.append(proba / proba.sum(axis=1, keepdims=True))
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))
