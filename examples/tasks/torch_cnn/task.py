"""The model, its training and its evaluation; weights cross as named float32 numpy arrays (the state_dict's).

Determinism (same config and seed, same bits): one intra-op thread, `torch.use_deterministic_algorithms(True)`,
the initial weights drawn after `torch.manual_seed(seed)`, and the minibatch order from a `torch.Generator` seeded
from the client's (run seed, round, client) seed. Nothing else is random (no dropout).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from fedkeeper.runtime.tasks.base import Evaluation, Split, Task, TaskError, TrainResult, Weights, int_seed

#: hyper-parameter defaults: the built-in models' (`runtime.model.TrainConfig`)
DEFAULT_HYPER: dict[str, Any] = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 1, "mu": 0.0,
                                 "l2": 0.0}
OPTIMIZERS = ("sgd", "momentum", "adam", "nadam")
#: examples per forward pass in evaluation (bounds memory, not results)
EVAL_BATCH = 512


def _torch() -> Any:
    """torch, set up for reproducible CPU runs (idempotent; imported on first use so validation needs no torch)."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)  # one core per function, and thread count changes reduction order
    if not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True)
    return torch


def _positive_int(params: Mapping[str, Any], key: str, default: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TaskError(f"params.{key} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Architecture:
    """conv(k×k, c1), ReLU, max-pool 2, conv(k×k, c2), ReLU, max-pool 2, dense(hidden), ReLU, dense(outputs).

    The built-in numpy `cnn` has this shape (32 and 64 channels, 5×5 kernels, 512 hidden units), so the two can
    be compared round for round; 'same' padding keeps 8×8 inputs at 4×4 and 2×2 after the pools.
    """

    height: int = 8
    width: int = 8
    channels: tuple[int, int] = (32, 64)
    kernel: int = 5
    hidden: int = 512
    outputs: int = 10

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Architecture":
        if not isinstance(params, Mapping):
            raise TaskError(f"params must be a mapping, got {type(params).__name__}")
        known = {"input_shape_x", "input_shape_y", "channels", "kernel", "hidden", "output_size"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TaskError(f"params.{unknown[0]}: unknown parameter; known: {', '.join(sorted(known))}")
        channels = params.get("channels", list(cls.channels))
        if (not isinstance(channels, (list, tuple)) or len(channels) != 2
                or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in channels)):
            raise TaskError(f"params.channels must be two positive integers, e.g. [32, 64]; got {channels!r}")
        kernel = _positive_int(params, "kernel", cls.kernel)
        if kernel % 2 == 0:
            raise TaskError(f"params.kernel must be odd ('same' padding), got {kernel}")
        arch = cls(height=_positive_int(params, "input_shape_x", cls.height),
                   width=_positive_int(params, "input_shape_y", cls.width),
                   channels=(int(channels[0]), int(channels[1])), kernel=kernel,
                   hidden=_positive_int(params, "hidden", cls.hidden),
                   outputs=_positive_int(params, "output_size", cls.outputs))
        if arch.height < 4 or arch.width < 4:
            raise TaskError(f"params.input_shape_x/y = {arch.height}x{arch.width}: two 2x2 pools need at least 4x4")
        return arch

    @property
    def features(self) -> int:
        return self.height * self.width

    def build(self) -> Any:
        torch = _torch()
        nn = torch.nn
        c1, c2 = self.channels
        pad = self.kernel // 2
        flat = c2 * (self.height // 4) * (self.width // 4)
        # named layers: the weights are conv1.weight, conv1.bias, ..., fc2.bias (the state_dict's names)
        return nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, c1, self.kernel, padding=pad)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(c1, c2, self.kernel, padding=pad)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(flat, self.hidden)), ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(self.hidden, self.outputs))]))


def _hyper(hyper: Mapping[str, Any], path: str) -> dict[str, Any]:
    out = dict(DEFAULT_HYPER)
    out.update({k: v for k, v in hyper.items() if k in DEFAULT_HYPER})
    if out["optim"] not in OPTIMIZERS:
        raise ValueError(f"{path}.optim must be one of {', '.join(OPTIMIZERS)}, got {out['optim']!r}")
    for key, positive in (("lr", True), ("mu", False), ("l2", False)):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                or (positive and v == 0):
            raise ValueError(f"{path}.{key} must be a number {'> 0' if positive else '>= 0'}, got {v!r}")
        out[key] = float(v)
    for key in ("batch_size", "local_epochs"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{path}.{key} must be a positive integer, got {v!r}")
    return out


class TorchCNNTask(Task):
    """The task: a fresh `nn.Module` per call, loaded from and dumped to named numpy arrays."""

    def __init__(self, arch: Architecture) -> None:
        self.arch = arch
        self.name = f"torch cnn {arch.channels[0]}-{arch.channels[1]}-{arch.hidden}"

    # ------------------------------------------------------------------------------ weights <-> state_dict

    @staticmethod
    def to_numpy(module: Any) -> Weights:
        return {name: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)
                for name, t in module.state_dict().items()}

    def module_from(self, weights: Mapping[str, np.ndarray]) -> Any:
        torch = _torch()
        module = self.arch.build()
        expected = list(module.state_dict())
        if list(weights) != expected:
            raise TaskError(f"weights hold {list(weights)}, {self.name} needs {expected}")
        # copies: the arrays handed in are read-only views of the stored model
        module.load_state_dict({name: torch.tensor(np.asarray(w, dtype=np.float32)) for name, w in weights.items()})
        return module

    def _inputs(self, x: Any) -> Any:
        torch = _torch()
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.arch.features:
            raise ValueError(f"the data has samples of shape {list(arr.shape[1:])}, params.input_shape_x/y need "
                             f"{self.arch.features} features ({self.arch.height}x{self.arch.width})")
        return torch.tensor(arr).reshape(-1, 1, self.arch.height, self.arch.width)

    def _labels(self, y: Any) -> Any:
        torch = _torch()
        labels = np.asarray(y, dtype=np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.arch.outputs):
            raise ValueError(f"labels span {labels.min()}..{labels.max()}, params.output_size is {self.arch.outputs}")
        return torch.tensor(labels)

    # ----------------------------------------------------------------------------------------- the calls

    def init(self, seed: np.random.SeedSequence) -> Weights:
        """He-normal kernels and zero biases (the numpy cnn's initialisation; PyTorch's default trains slower)."""
        torch = _torch()
        torch.manual_seed(int_seed(seed))
        module = self.arch.build()
        layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        for layer in layers[:-1]:
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            torch.nn.init.zeros_(layer.bias)
        torch.nn.init.xavier_uniform_(layers[-1].weight)
        torch.nn.init.zeros_(layers[-1].bias)
        return self.to_numpy(module)

    def check_hyper(self, hyper: Mapping[str, Any], path: str) -> None:
        _hyper(hyper, path)

    def _optimizer(self, params: Any, hp: Mapping[str, Any]) -> Any:
        optim = _torch().optim
        if hp["optim"] == "sgd":
            return optim.SGD(params, lr=hp["lr"])
        if hp["optim"] == "momentum":
            return optim.SGD(params, lr=hp["lr"], momentum=0.9)
        if hp["optim"] == "nadam":
            return optim.NAdam(params, lr=hp["lr"])
        return optim.Adam(params, lr=hp["lr"])

    def train(self, weights: Mapping[str, np.ndarray], shard: Split, hyper: Mapping[str, Any],
              seed: np.random.SeedSequence) -> TrainResult:
        torch = _torch()
        hp = _hyper(hyper, "params.train")
        n = len(shard)
        if n == 0:
            raise ValueError("no training examples in this client's partition")
        x, y = self._inputs(shard.x), self._labels(shard.y)
        module = self.module_from(weights)
        anchor = [p.detach().clone() for p in module.parameters()] if hp["mu"] else None
        opt = self._optimizer(module.parameters(), hp)
        generator = torch.Generator().manual_seed(int_seed(seed))
        loss_fn = torch.nn.functional.cross_entropy
        started = time.perf_counter()
        steps = 0
        module.train()
        for _ in range(hp["local_epochs"]):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, hp["batch_size"]):
                idx = order[start:start + hp["batch_size"]]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(module(x[idx]), y[idx])
                if hp["l2"]:
                    loss = loss + 0.5 * hp["l2"] * sum((p * p).sum() for p in module.parameters() if p.dim() > 1)
                if anchor is not None:  # FedProx: (mu/2)·‖w − w_global‖²
                    loss = loss + 0.5 * hp["mu"] * sum(((p - a) ** 2).sum()
                                                      for p, a in zip(module.parameters(), anchor))
                loss.backward()
                opt.step()
                steps += 1
        train_s = time.perf_counter() - started
        new = self.to_numpy(module)
        for name, w in new.items():
            if not np.all(np.isfinite(w)):
                raise ValueError(f"training diverged: weight {name!r} is not finite (lower train.lr?)")
        loss_value, accuracy = self._measure(module, x, y)
        return TrainResult(new, n, {"train_loss": loss_value, "train_accuracy": accuracy, "steps": steps,
                                    "train_s": train_s})

    def _measure(self, module: Any, x: Any, y: Any) -> tuple[float, float]:
        torch = _torch()
        module.eval()
        total_loss, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(y), EVAL_BATCH):
                logits = module(x[start:start + EVAL_BATCH])
                labels = y[start:start + EVAL_BATCH]
                total_loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(dim=1) == labels).sum())
        n = max(1, len(y))
        return total_loss / n, correct / n

    def evaluate(self, weights: Mapping[str, np.ndarray], split: Split) -> Evaluation:
        if len(split) == 0:
            return Evaluation(float("nan"), float("nan"))
        module = self.module_from(weights)
        loss, accuracy = self._measure(module, self._inputs(split.x), self._labels(split.y))
        return Evaluation(loss, accuracy)


def make_task(params: Mapping[str, Any]) -> TorchCNNTask:
    """The task for `task.params` (input_shape_x/y, channels, kernel, hidden, output_size); TaskError names a bad
    key as params.<key>."""
    return TorchCNNTask(Architecture.from_params(params or {}))
