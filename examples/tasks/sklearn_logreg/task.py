"""Logistic regression with scikit-learn's SGDClassifier, warm-started from the global model each round.

Weights are ``coef`` (classes x features) and ``intercept`` (classes,), float32: exactly what the estimator's
``coef_`` and ``intercept_`` hold, so FedAvg averages the same numbers sklearn trains. One local epoch is one
``partial_fit`` pass over the client's shard (shuffled from the round's seed); every client declares all classes,
so a shard missing some labels still returns weights of the global shape.

params (all optional): ``classes`` (10), ``features`` (64), ``alpha`` (L2 strength, 1e-4),
``init_scale`` (std of the random initial coefficients, 0.01).
Hyper-parameters used: ``lr`` (constant learning rate eta0), ``local_epochs``. ``mu`` > 0 (FedProx) is refused:
SGDClassifier has no proximal term.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

from fedkeeper.runtime.tasks.base import Evaluation, Split, Task, TrainResult, Weights, int_seed

_DEFAULTS = {"classes": 10, "features": 64, "alpha": 1e-4, "init_scale": 0.01}


class SklearnLogReg(Task):
    def __init__(self, classes: int, features: int, alpha: float, init_scale: float) -> None:
        self.classes, self.features, self.alpha, self.init_scale = classes, features, alpha, init_scale
        self.name = f"sklearn SGD logistic regression ({features} -> {classes})"

    # -- the model as named arrays

    def init(self, seed: np.random.SeedSequence) -> Weights:
        rng = np.random.default_rng(seed)
        coef = (rng.standard_normal((self.classes, self.features)) * self.init_scale).astype(np.float32)
        return {"coef": coef, "intercept": np.zeros(self.classes, np.float32)}

    def _estimator(self, weights: Mapping[str, np.ndarray], *, lr: float = 0.01, seed: int = 0) -> SGDClassifier:
        clf = SGDClassifier(loss="log_loss", penalty="l2", alpha=self.alpha, learning_rate="constant", eta0=lr,
                            max_iter=1, tol=None, shuffle=True, random_state=seed, average=False)
        clf.classes_ = np.arange(self.classes)
        clf.coef_ = np.array(weights["coef"], dtype=np.float64)  # copies: the global weights are read-only views
        clf.intercept_ = np.array(weights["intercept"], dtype=np.float64)
        return clf

    def _weights(self, clf: SGDClassifier) -> Weights:
        return {"coef": clf.coef_.astype(np.float32), "intercept": clf.intercept_.astype(np.float32)}

    # -- the interface

    def check_hyper(self, hyper: Mapping[str, Any], path: str) -> None:
        mu = hyper.get("mu") or 0
        if mu:
            raise ValueError(f"{path}.mu is {mu}: the sklearn task has no proximal term (FedProx); use fedavg")
        lr = hyper.get("lr", 0.01)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"{path}.lr must be a positive number, got {lr!r}")

    def train(self, weights: Mapping[str, np.ndarray], shard: Split, hyper: Mapping[str, Any],
              seed: np.random.SeedSequence) -> TrainResult:
        self.check_hyper(hyper, "params.train")
        x, y = np.asarray(shard.x, np.float64), np.asarray(shard.y)
        epochs = int(hyper.get("local_epochs", 1))
        clf = self._estimator(weights, lr=float(hyper.get("lr", 0.01)), seed=int_seed(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(epochs):
                clf.partial_fit(x, y, classes=clf.classes_)
        new = self._weights(clf)
        loss, accuracy = self._scores(new, x, y)
        return TrainResult(new, len(y), {"train_loss": loss, "train_accuracy": accuracy, "epochs": epochs})

    def evaluate(self, weights: Mapping[str, np.ndarray], split: Split) -> Evaluation:
        loss, accuracy = self._scores(weights, np.asarray(split.x, np.float64), np.asarray(split.y))
        return Evaluation(loss, accuracy)

    def _scores(self, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        clf = self._estimator(weights)
        proba = clf.predict_proba(x)
        accuracy = float(np.mean(clf.classes_[proba.argmax(axis=1)] == y))
        return float(log_loss(y, proba, labels=clf.classes_)), accuracy


def make_task(params: Mapping[str, Any]) -> SklearnLogReg:
    unknown = set(params) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"params.{sorted(unknown)[0]}: unknown parameter (known: {', '.join(_DEFAULTS)})")
    values = {**_DEFAULTS, **params}
    for key in ("classes", "features"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (3 if key == "classes" else 1):
            raise ValueError(f"params.{key} must be an integer >= {3 if key == 'classes' else 1}, got {v!r}")
    for key in ("alpha", "init_scale"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"params.{key} must be a number >= 0, got {v!r}")
    return SklearnLogReg(values["classes"], values["features"], float(values["alpha"]), float(values["init_scale"]))
