"""Bayes classification over per-class log-likelihoods: p(y | x) ∝ p(x | y) p(y).

``score_images`` computes the (N, K) matrix log p(x_i | y = k) with a chosen estimator
(``"ode"``: the probability-flow ODE of ``sgc.likelihood``), in chunks with a progress
bar; ``posterior`` turns it into class probabilities; ``ScoreClassifier`` wraps training
and scoring as a scikit-learn estimator.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from .likelihood import class_log_likelihoods, validate_images
from .progress import tqdm

__all__ = ["ClassScores", "score_images", "log_prior", "posterior", "save_scores_csv",
           "read_scores_csv", "ScoreClassifier", "ESTIMATORS"]

ESTIMATORS = ("ode", "elbo")


@dataclass
class ClassScores:
    log_lik: np.ndarray            # (N, K) log p(x | y = k), nats, density of x on [0, 1]^D
    bpd: np.ndarray                # (N, K) bits/dim of the discrete data
    nfe: np.ndarray                # (N,) network evaluations spent on each image's solve
    seconds: float                 # wall-clock seconds for all images
    estimator: str = "ode"
    extra: dict = field(default_factory=dict)  # estimator diagnostics, e.g. standard errors


def _estimate_chunk(model, sde, x, estimator, levels, dequantize, generator, options):
    if estimator == "ode":
        r = class_log_likelihoods(model, sde, x, levels=levels, dequantize=dequantize,
                                  generator=generator, **options)
        return r.logp, r.bpd, r.nfe, {}
    if estimator == "elbo":
        from .elbo import elbo_class_scores
        r = elbo_class_scores(model, sde, x, levels=levels, dequantize=dequantize,
                              generator=generator, **options)
        extra = {"stderr": r.stderr, "evals": r.evals, "alive": r.alive}
        if r.values is not None:  # keep_draws: per-draw material of sgc.evidence
            extra.update(u=r.u, t=r.t, values=r.values)
        return r.logp, r.bpd, r.nfe, extra
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")


def score_images(model, sde, images, *,
                 estimator: str = "ode",     # "ode" (exact likelihood) or "elbo" (Monte-Carlo bound)
                 batch_size: int = 64,       # images per solve (all classes of an image together)
                 levels: int = 256,          # intensity levels of the source data
                 dequantize: bool = True,    # uniform dequantization, shared across classes
                 seed: int = 0,              # seeds probes and dequantization noise
                 progress: bool = True,
                 **options) -> ClassScores:
    """log p(x | y) for all images (N, C, H, W) in [0, 1] and all classes of ``model``."""
    x_all = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    validate_images(x_all, model)
    gen = torch.Generator().manual_seed(seed)
    n = x_all.shape[0]
    logs, bpds, nfes, extras = [], [], [], []
    start = time.perf_counter()
    with tqdm(total=n, disable=not progress, desc=f"classify ({estimator})", unit="img") as bar:
        for i in range(0, n, batch_size):
            x = x_all[i:i + batch_size]
            lp, bpd, nfe, extra = _estimate_chunk(model, sde, x, estimator, levels, dequantize, gen, options)
            logs.append(lp.numpy())
            bpds.append(bpd.numpy())
            nfes.append(np.full(len(x), nfe))
            extras.append(extra)
            bar.update(len(x))
            bar.set_postfix(nfe=nfe)
    extra = {k: np.concatenate([np.asarray(e[k]) for e in extras]) for k in extras[0]} if extras else {}
    return ClassScores(np.concatenate(logs), np.concatenate(bpds), np.concatenate(nfes),
                       time.perf_counter() - start, estimator, extra)


def log_prior(num_classes: int, prior="uniform", train_labels=None) -> np.ndarray:
    """log p(y), shape (K,). prior: "uniform", "empirical" (from train_labels) or K probabilities."""
    if isinstance(prior, str):
        if prior == "uniform":
            return np.full(num_classes, -np.log(num_classes))
        if prior == "empirical":
            if train_labels is None:
                raise ValueError("prior='empirical' needs the training labels")
            from .decision import empirical_prior
            return np.log(empirical_prior(train_labels, num_classes))
        raise ValueError(f"prior must be 'uniform', 'empirical' or a list of probabilities, got {prior!r}")
    p = np.asarray(prior, dtype=float)
    if p.shape != (num_classes,) or (p <= 0).any() or abs(p.sum() - 1) > 1e-6:
        raise ValueError(f"prior must be {num_classes} positive probabilities summing to 1, got {p}")
    return np.log(p)


def posterior(log_lik: np.ndarray, log_p_y: np.ndarray | None = None) -> np.ndarray:
    """p(y | x) = softmax_k(log p(x | k) + log p(k)), rows sum to one. (N, K) -> (N, K).

    ``log_p_y`` is a log prior as from ``log_prior`` (None: uniform); the softmax itself is
    ``sgc.decision.apply_prior``, which also takes a temperature.
    """
    from .decision import apply_prior
    log_lik = np.asarray(log_lik, dtype=np.float64)
    if not np.isfinite(log_lik).all():
        raise ValueError("log-likelihoods contain NaN or inf; rerun the solve with a tighter tolerance")
    return apply_prior(log_lik, "uniform" if log_p_y is None else np.exp(np.asarray(log_p_y, dtype=np.float64)))


def save_scores_csv(path, scores: ClassScores, ids, labels, class_names, post=None) -> Path:
    """One row per image x class: image_id, label, class, log_lik_nats, bpd, posterior, nfe."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    post = posterior(scores.log_lik) if post is None else post
    from .fileio import atomic_path
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "label", "class", "class_name", "log_lik_nats", "bpd", "posterior",
                    "nfe", "estimator"])
        for i, image_id in enumerate(ids):
            for k, name in enumerate(class_names):
                w.writerow([image_id, "" if labels is None else int(labels[i]), k, name,
                            f"{scores.log_lik[i, k]:.6f}", f"{scores.bpd[i, k]:.6f}", f"{post[i, k]:.6g}",
                            int(scores.nfe[i]), scores.estimator])
    return path


def read_scores_csv(path) -> tuple[list, np.ndarray, np.ndarray]:
    """(image_ids, labels (N,), log_lik (N, K)) from a CSV written by ``save_scores_csv``."""
    import pandas as pd
    df = pd.read_csv(path, dtype={"image_id": str})
    wide = df.pivot(index="image_id", columns="class", values="log_lik_nats")
    order = list(dict.fromkeys(df["image_id"]))
    wide = wide.loc[order]
    labels = df.drop_duplicates("image_id").set_index("image_id").loc[order, "label"].to_numpy()
    return order, labels, wide.to_numpy()


class ScoreClassifier(ClassifierMixin, BaseEstimator):
    """A score-based generative classifier with the scikit-learn interface.

    X: float array (N, C, H, W) in [0, 1]; y: int labels 0..K-1. ``fit`` trains one
    class-conditional score model by DSM; ``predict_proba`` is Bayes' rule over
    per-class log-likelihoods from ``estimator``.
    """

    def __init__(self,
                 arch: str = "unet",          # "unet" or "mlp"
                 model_options: dict | None = None,   # keyword arguments of the network
                 sde: str = "vp",             # "vp", "subvp" or "ve"
                 train_options: dict | None = None,   # TrainConfig fields
                 estimator: str = "ode",      # "ode" or "elbo"
                 estimator_options: dict | None = None,  # e.g. rtol, atol, method, n_draws
                 prior: str = "uniform",      # "uniform", "empirical" or probabilities
                 levels: int = 256,           # intensity levels of the source data
                 batch_size: int = 64,        # images per likelihood solve
                 device: str | None = None,
                 run_dir: str | None = None,  # where checkpoints go (None: in memory only)
                 progress: bool = True):
        self.arch, self.model_options, self.sde = arch, model_options, sde
        self.train_options, self.estimator, self.estimator_options = train_options, estimator, estimator_options
        self.prior, self.levels, self.batch_size = prior, levels, batch_size
        self.device, self.run_dir, self.progress = device, run_dir, progress

    def fit(self, X, y):
        from .nets import build_model
        from .sde import make_sde
        from .train import train_score_model
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if not np.array_equal(self.classes_, np.arange(len(self.classes_))):
            raise ValueError(f"labels must be 0..K-1 with every class present; got {self.classes_.tolist()}")
        config = {"arch": self.arch, "num_classes": len(self.classes_), "in_channels": X.shape[1],
                  "image_size": X.shape[2], **(self.model_options or {})}
        model = build_model(config)
        self.sde_ = make_sde(self.sde)
        train = {"levels": self.levels, **(self.train_options or {})}
        _, self.model_, self.history_ = train_score_model(
            model, self.sde_, X, y, train, run_dir=self.run_dir, device=self.device, progress=self.progress)
        self.log_prior_ = log_prior(len(self.classes_), self.prior, y)
        return self

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise RuntimeError("this ScoreClassifier is not fitted yet; call fit(X, y) or from_run(run_dir)")

    @classmethod
    def from_run(cls, run_dir, device=None, **kwargs) -> "ScoreClassifier":
        """A fitted classifier from a trained run folder (EMA weights)."""
        from .runs import load_run
        model, sde, config = load_run(run_dir, device or "cpu")
        k = model.num_classes
        train = config.get("train", {})
        clf = cls(arch=config["model"]["arch"], sde=config["sde"]["name"],
                  levels=train.get("levels", 256), device=device, run_dir=str(run_dir), **kwargs)
        clf.model_, clf.sde_, clf.classes_ = model, sde, np.arange(k)
        counts = config.get("data", {}).get("train_counts")  # recorded by sgc.pipeline.train_on_dataset
        labels = None if counts is None else np.repeat(np.arange(k), counts)
        clf.log_prior_ = log_prior(k, kwargs.get("prior", "uniform"), labels)
        from .runs import find_checkpoint, sha256_file
        clf.config_, clf.source_dir_ = config, Path(run_dir)   # preprocessing, classes, OOD calibration
        clf.checkpoint_sha256_ = sha256_file(find_checkpoint(run_dir))
        return clf

    @classmethod
    def load(cls, path, device=None, **kwargs) -> "ScoreClassifier":
        """A fitted classifier from an export folder (``sgc export``); safetensors, never unpickled."""
        from .export import load_classifier
        return load_classifier(cls, path, device=device, **kwargs)

    def predict_files(self, files, **options):
        """One row per image file (DataFrame): see :func:`sgc.predict.predict_files`."""
        from .predict import predict_files
        return predict_files(self, files, **options)

    def log_likelihoods(self, X) -> ClassScores:
        self._check_fitted()
        return score_images(self.model_, self.sde_, X, estimator=self.estimator, batch_size=self.batch_size,
                            levels=self.levels, progress=self.progress, **(self.estimator_options or {}))

    def predict_proba(self, X) -> np.ndarray:
        self.scores_ = self.log_likelihoods(X)
        return posterior(self.scores_.log_lik, self.log_prior_)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # first: an unfitted estimator says so (not AttributeError: classes_)
        return self.classes_[proba.argmax(1)]
