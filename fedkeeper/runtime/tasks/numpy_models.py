"""The built-in numpy models (logreg, mlp, cnn of `runtime.model`) as a task: the default when the config names none.

A thin adapter: every call is the code the functions ran before tasks existed, with the same arguments, so
existing runs keep their model sha256 bit for bit. ``make_task(params)`` takes the model keys of
``data_sampling`` (model, input_size, hidden_size, output_size, input_shape_x, input_shape_y).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from fedkeeper.runtime import data as rdata
from fedkeeper.runtime import model as rmodel
from fedkeeper.runtime.tasks.base import Evaluation, Split, Task, TrainResult, Weights, WeightsSpec

MODULE = __name__


class NumpyModelTask(Task):
    def __init__(self, mdl: rmodel.Model) -> None:
        self.model = mdl
        self.name = f"numpy {mdl.spec.model}"

    def init(self, seed: np.random.SeedSequence) -> Weights:
        return self.model.init(seed)

    def weights_spec(self) -> WeightsSpec:
        return self.model.expected()

    def check_hyper(self, hyper: Mapping[str, Any], path: str) -> None:
        rmodel.TrainConfig.from_params(hyper, path)

    def _check_features(self, split: Split, what: str) -> None:
        features = split.x.shape[1] if np.ndim(split.x) == 2 else None
        if features != self.model.spec.num_features:
            raise ValueError(f"{what} has {features} features per sample, params.model needs "
                             f"{self.model.spec.num_features}")

    def _train_config(self, hyper: Mapping[str, Any]) -> rmodel.TrainConfig:
        """`hyper` parsed, the last one kept: a client pack trains many clients with the same `hyper`."""
        cached = self.__dict__.get("_last_train_config")
        if cached is not None and cached[0] == hyper:
            return cached[1]
        cfg = rmodel.TrainConfig.from_params(hyper, "params.train")
        self.__dict__["_last_train_config"] = (dict(hyper), cfg)
        return cfg

    def train(self, weights: Mapping[str, np.ndarray], shard: Split, hyper: Mapping[str, Any],
              seed: np.random.SeedSequence) -> TrainResult:
        cfg = self._train_config(hyper)
        self._check_features(shard, "the data")
        new, metrics = rmodel.train_local(self.model, weights, shard.x, shard.y, optim=cfg.optim, lr=cfg.lr,
                                          batch_size=cfg.batch_size, local_epochs=cfg.local_epochs, mu=cfg.mu,
                                          l2=cfg.l2, seed=seed)
        return TrainResult(new, metrics["num_examples"], {k: metrics[k] for k in
                                                          ("train_loss", "train_accuracy", "steps", "train_s")})

    def evaluate(self, weights: Mapping[str, np.ndarray], split: Split) -> Evaluation:
        self._check_features(split, "the test images")
        if len(split) and split.y.max() >= self.model.spec.output_size:
            raise ValueError(f"test labels reach {split.y.max()}, params.model.output_size is "
                             f"{self.model.spec.output_size}")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, accuracy = self.model.evaluate(weights, split.x, split.y)
        return Evaluation(loss, accuracy)

    def train_labels(self, spec: Mapping[str, Any]) -> np.ndarray:
        return rdata.split_labels(rdata.DataSpec.from_params(spec, "params.data"), "train")

    def load_test(self, spec: Mapping[str, Any]) -> Split:
        return rdata.load_split(rdata.DataSpec.from_params(spec, "params.data"), "test")

    def load_dataset(self, spec: Mapping[str, Any]) -> tuple[Split, Split]:
        dspec = rdata.DataSpec.from_params(spec, "params.data")
        return rdata.load_split(dspec, "train"), rdata.load_split(dspec, "test")


def make_task(params: Mapping[str, Any], path: str = "params.model") -> NumpyModelTask:
    return NumpyModelTask(rmodel.build_model(rmodel.ModelSpec.from_params(params, path)))
