"""Numpy models trained inside the functions: logreg, mlp and the prototype's MNIST cnn.

Why numpy and not a framework: a function zip must stay small and start cold in well under a second, and
TensorFlow/PyTorch are hundreds of MB. These models are the same maths, written as matrix products
(convolutions through im2col), with hand-written backward passes that the tests check against finite
differences.

Weights are an ordered ``dict`` name → float32 array (the order is the blob order). Images arrive flattened,
shape (N, features); the cnn reshapes them to (N, input_shape_x, input_shape_y, 1) (NHWC, kernels HWIO).
Computation runs in the weights' dtype, so the gradient checks can pass float64 copies.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

Weights = dict[str, np.ndarray]
Spec = dict[str, tuple[tuple[int, ...], np.dtype]]

MODEL_KINDS = ("logreg", "mlp", "cnn")
OPTIMIZERS = ("sgd", "momentum", "adam", "nadam")


class ModelError(ValueError):
    """A model or training setting is wrong; the message names the key path or the weight."""


# --------------------------------------------------------------------------------------------------- specs


def _positive_int(params: Mapping[str, Any], key: str, path: str) -> int:
    value = params.get(key)
    if value is None:
        raise ModelError(f"{path}.{key} is required for model {params.get('model')!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelError(f"{path}.{key} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """The ``data_sampling`` part of the config that decides the architecture."""

    model: str
    output_size: int
    input_size: int | None = None
    hidden_size: int | None = None
    input_shape_x: int | None = None
    input_shape_y: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "model") -> "ModelSpec":
        if not isinstance(params, Mapping):
            raise ModelError(f"{path} must be a mapping, got {type(params).__name__}")
        kind = params.get("model")
        if kind not in MODEL_KINDS:
            raise ModelError(f"{path}.model must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
        out = _positive_int(params, "output_size", path)
        if kind == "logreg":
            return cls(kind, out, input_size=_positive_int(params, "input_size", path))
        if kind == "mlp":
            return cls(
                kind,
                out,
                input_size=_positive_int(params, "input_size", path),
                hidden_size=_positive_int(params, "hidden_size", path),
            )
        return cls(
            kind,
            out,
            input_shape_x=_positive_int(params, "input_shape_x", path),
            input_shape_y=_positive_int(params, "input_shape_y", path),
        )

    @property
    def num_features(self) -> int:
        if self.model == "cnn":
            assert self.input_shape_x is not None and self.input_shape_y is not None
            return self.input_shape_x * self.input_shape_y
        assert self.input_size is not None
        return self.input_size


@dataclass(frozen=True)
class TrainConfig:
    """``model_params``: optimizer, learning rate, batch size, local epochs, FedProx mu, L2 factor."""

    optim: str = "adam"
    lr: float = 0.01
    batch_size: int = 10
    local_epochs: int = 1
    mu: float = 0.0
    l2: float = 0.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "train") -> "TrainConfig":
        if not isinstance(params, Mapping):
            raise ModelError(f"{path} must be a mapping, got {type(params).__name__}")
        optim = params.get("optim", cls.optim)
        if optim not in OPTIMIZERS:
            raise ModelError(f"{path}.optim must be one of {', '.join(OPTIMIZERS)}, got {optim!r}")
        values: dict[str, Any] = {"optim": optim}
        for key, positive in (("lr", True), ("mu", False), ("l2", False)):
            v = params.get(key, getattr(cls, key))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ModelError(f"{path}.{key} must be a number, got {v!r}")
            if v < 0 or (positive and v == 0):
                raise ModelError(f"{path}.{key} must be {'> 0' if positive else '>= 0'}, got {v!r}")
            values[key] = float(v)
        for key in ("batch_size", "local_epochs"):
            v = params.get(key, getattr(cls, key))
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ModelError(f"{path}.{key} must be a positive integer, got {v!r}")
            values[key] = v
        return cls(**values)


def expected_spec(weights: Mapping[str, np.ndarray]) -> Spec:
    """name → (shape, dtype) of a weights dict: what a blob must match to be accepted."""
    return {name: (tuple(arr.shape), arr.dtype) for name, arr in weights.items()}


def as_seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ModelError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def derive_seed(*parts: int) -> np.random.SeedSequence:
    """A stable seed from e.g. (seed, round, client_id): SeedSequence mixes the parts, no Python hash()."""
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0:
            raise ModelError(f"seed parts must be non-negative integers, got {parts!r}")
    return np.random.SeedSequence([int(p) for p in parts])


# -------------------------------------------------------------------------------------------------- layers


class Layer:
    """One differentiable step. ``params`` are the global weight names it owns, in blob order."""

    params: tuple[str, ...] = ()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init(self, rng: np.random.Generator) -> Weights:
        return {}

    def forward(self, w: Mapping[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward(
        self, w: Mapping[str, np.ndarray], cache: Any, dout: np.ndarray, need_dx: bool
    ) -> tuple[np.ndarray | None, Weights]:
        raise NotImplementedError


def _he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


class Dense(Layer):
    def __init__(self, w: str, b: str, n_in: int, n_out: int, *, init: str) -> None:
        self.params = (w, b)
        self.w, self.b, self.n_in, self.n_out, self.init_kind = w, b, n_in, n_out, init

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {self.w: (self.n_in, self.n_out), self.b: (self.n_out,)}

    def init(self, rng: np.random.Generator) -> Weights:
        shape = (self.n_in, self.n_out)
        if self.init_kind == "he":
            kernel = _he_normal(rng, shape, self.n_in)
        else:
            kernel = _glorot_uniform(rng, shape, self.n_in, self.n_out)
        return {self.w: kernel, self.b: np.zeros(self.n_out, np.float32)}

    def forward(self, w: Mapping[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, Any]:
        return x @ w[self.w] + w[self.b], x

    def backward(self, w, cache, dout, need_dx):
        x = cache
        grads = {self.w: x.T @ dout, self.b: dout.sum(axis=0)}
        return (dout @ w[self.w].T if need_dx else None), grads


class ReLU(Layer):
    def forward(self, w, x):
        mask = x > 0
        return x * mask, mask

    def backward(self, w, cache, dout, need_dx):
        return dout * cache, {}


class Conv2D(Layer):
    """'same' convolution, stride 1, NHWC input, HWIO kernel; im2col so the work is one matrix product.

    The only Python loops run over the k×k kernel offsets (25 for 5×5), each moving a whole image slab.
    """

    def __init__(self, w: str, b: str, k: int, c_in: int, c_out: int) -> None:
        self.params = (w, b)
        self.w, self.b, self.k, self.c_in, self.c_out = w, b, k, c_in, c_out
        self.pad = k // 2

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {self.w: (self.k, self.k, self.c_in, self.c_out), self.b: (self.c_out,)}

    def init(self, rng: np.random.Generator) -> Weights:
        fan_in = self.k * self.k * self.c_in
        return {self.w: _he_normal(rng, self.shapes()[self.w], fan_in), self.b: np.zeros(self.c_out, np.float32)}

    def forward(self, w, x):
        n, h, wd, c = x.shape
        k, p = self.k, self.pad
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        cols = np.empty((n, h, wd, k, k, c), dtype=x.dtype)
        for i in range(k):
            for j in range(k):
                cols[:, :, :, i, j, :] = xp[:, i : i + h, j : j + wd, :]
        cols2 = cols.reshape(n * h * wd, k * k * c)
        out = cols2 @ w[self.w].reshape(k * k * c, self.c_out) + w[self.b]
        return out.reshape(n, h, wd, self.c_out), (cols2, x.shape)

    def backward(self, w, cache, dout, need_dx):
        cols2, (n, h, wd, c) = cache
        k, p = self.k, self.pad
        dout2 = dout.reshape(-1, self.c_out)
        grads = {
            self.w: (cols2.T @ dout2).reshape(k, k, c, self.c_out),
            self.b: dout2.sum(axis=0),
        }
        if not need_dx:
            return None, grads
        dcols = (dout2 @ w[self.w].reshape(k * k * c, self.c_out).T).reshape(n, h, wd, k, k, c)
        dxp = np.zeros((n, h + 2 * p, wd + 2 * p, c), dtype=dout.dtype)
        for i in range(k):
            for j in range(k):
                dxp[:, i : i + h, j : j + wd, :] += dcols[:, :, :, i, j, :]
        return dxp[:, p : p + h, p : p + wd, :], grads


class MaxPool2(Layer):
    """2×2 max pooling, stride 2 (an odd last row/column is dropped, like Keras 'valid').

    Works on the four strided corner views of each window, so nothing is transposed or copied whole; the
    backward pass routes each gradient to the first maximal corner (as an argmax would).
    """

    @staticmethod
    def _corners(x: np.ndarray) -> list[np.ndarray]:
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        return [x[:, i : 2 * h2 : 2, j : 2 * w2 : 2, :] for i in (0, 1) for j in (0, 1)]

    def forward(self, w, x):
        a, b, c, d = self._corners(x)
        out = np.maximum(np.maximum(a, b), np.maximum(c, d))
        taken = a == out
        masks = [taken]
        for corner in (b, c):
            hit = (corner == out) & ~taken
            masks.append(hit)
            taken = taken | hit
        masks.append(~taken)
        return out, (masks, x.shape)

    def backward(self, w, cache, dout, need_dx):
        masks, shape = cache
        dx = np.zeros(shape, dtype=dout.dtype)
        for view, mask in zip(self._corners(dx), masks):
            np.multiply(dout, mask, out=view)
        return dx, {}


class Reshape(Layer):
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def forward(self, w, x):
        return x.reshape((x.shape[0],) + self.shape), x.shape

    def backward(self, w, cache, dout, need_dx):
        return dout.reshape(cache), {}


def _mean(values: np.ndarray) -> float:
    """``float(np.mean(values))`` of a float32/float64 vector without np.mean's Python-level overhead: the same
    pairwise sum in the array's dtype divided by the count in that dtype, so the same bits."""
    if values.dtype != np.float32 and values.dtype != np.float64:
        return float(np.mean(values))
    return float(np.add.reduce(values) / values.shape[0])


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Mean cross-entropy of integer labels (stable log-sum-exp), and what its gradient needs: exp(z), the row
    sums and the row indices."""
    z = logits - logits.max(axis=1, keepdims=True)
    ez = np.exp(z)
    sums = ez.sum(axis=1, keepdims=True)
    rows = np.arange(logits.shape[0])
    return _mean(np.log(sums[:, 0]) - z[rows, y]), ez, sums, rows


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of integer labels and its gradient with respect to the logits (stable log-sum-exp)."""
    n = logits.shape[0]
    loss, ez, sums, rows = _cross_entropy(logits, y)
    grad = ez / sums
    grad[rows, y] -= 1.0
    grad /= n
    return loss, grad


def proximal_term(
    weights: Mapping[str, np.ndarray], anchor: Mapping[str, np.ndarray], mu: float
) -> tuple[float, Weights]:
    """FedProx: (mu/2)·‖w − w_global‖² and its gradient mu·(w − w_global)."""
    value = 0.0
    grads: Weights = {}
    for name, w in weights.items():
        diff = w - anchor[name]
        value += float(np.vdot(diff, diff))
        grads[name] = mu * diff
    return 0.5 * mu * value, grads


# --------------------------------------------------------------------------------------------------- model


class LossAndGrads(NamedTuple):
    loss: float  # data loss + L2 penalty (the objective the gradients belong to)
    grads: Weights
    correct: int  # correctly classified samples in the batch (free by-product of the forward pass)


class Model:
    """A stack of layers ending in logits; softmax cross-entropy on top."""

    def __init__(self, spec: ModelSpec, layers: list[Layer], kernels: tuple[str, ...], eval_batch: int) -> None:
        self.spec = spec
        self.layers = layers
        self.kernels = kernels  # weights that L2 applies to (not biases)
        self.eval_batch = eval_batch

    @property
    def param_names(self) -> list[str]:
        return [name for layer in self.layers for name in layer.params]

    def expected(self, dtype: np.dtype | type = np.float32) -> Spec:
        """name → (shape, dtype) this architecture needs: the reference for validating stored blobs."""
        out: Spec = {}
        for layer in self.layers:
            for name, shape in layer.shapes().items():
                out[name] = (shape, np.dtype(dtype))
        return out

    def check_weights(self, weights: Mapping[str, np.ndarray], what: str = "weights") -> None:
        want = self.expected()
        if list(weights) != list(want):
            raise ModelError(f"{what} hold {list(weights)}, model {self.spec.model} needs {list(want)}")
        for name, (shape, dtype) in want.items():
            arr = weights[name]
            if tuple(arr.shape) != shape or arr.dtype != dtype:
                have, need = f"{arr.dtype}{list(arr.shape)}", f"{dtype}{list(shape)}"
                raise ModelError(f"{what}[{name!r}] is {have}, model {self.spec.model} needs {need}")

    def init(self, seed: int | np.random.SeedSequence) -> Weights:
        rng = np.random.default_rng(as_seed_sequence(seed))
        weights: Weights = {}
        for layer in self.layers:
            weights.update(layer.init(rng))
        return weights

    def _inputs(self, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        dtype = next(iter(weights.values())).dtype
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.spec.num_features:
            raise ModelError(
                f"inputs have shape {list(x.shape)}, model {self.spec.model} needs (N, {self.spec.num_features})"
            )
        return x.astype(dtype, copy=False)

    def forward(self, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        out = self._inputs(weights, x)
        for layer in self.layers:
            out, _ = layer.forward(weights, out)
        return out

    def loss_and_grads(
        self, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, l2: float = 0.0
    ) -> LossAndGrads:
        out = self._inputs(weights, x)
        caches = []
        for layer in self.layers:
            out, cache = layer.forward(weights, out)
            caches.append(cache)
        y = np.asarray(y)
        loss, dout = softmax_cross_entropy(out, y)
        correct = int(np.count_nonzero(out.argmax(axis=1) == y))
        grads: Weights = {}
        for pos in range(len(self.layers) - 1, -1, -1):
            dout, g = self.layers[pos].backward(weights, caches[pos], dout, need_dx=pos > 0)
            grads.update(g)
        if l2:
            for name in self.kernels:
                w = weights[name]
                loss += 0.5 * l2 * float(np.vdot(w, w))
                grads[name] = grads[name] + l2 * w
        return LossAndGrads(loss, {name: grads[name] for name in self.param_names}, correct)

    def predict(self, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        """Predicted class per sample, in batches of ``eval_batch``."""
        if len(x) == 0:
            return np.zeros(0, np.int64)
        step = self.eval_batch
        return np.concatenate([self.forward(weights, x[i : i + step]).argmax(axis=1) for i in range(0, len(x), step)])

    def evaluate(self, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) in batches, so a 10,000-image cnn evaluation stays within memory."""
        n = len(x)
        if n == 0:
            raise ModelError("cannot evaluate on an empty data set")
        total_loss = 0.0
        correct = 0
        for i in range(0, n, self.eval_batch):
            logits = self.forward(weights, x[i : i + self.eval_batch])
            yb = np.asarray(y[i : i + self.eval_batch])
            loss = _cross_entropy(logits.astype(np.float64), yb)[0]
            total_loss += loss * len(yb)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == yb))
        return total_loss / n, correct / n


def build_model(spec: ModelSpec | Mapping[str, Any]) -> Model:
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_params(spec)
    out = spec.output_size
    if spec.model == "logreg":
        assert spec.input_size is not None
        return Model(spec, [Dense("w1", "b1", spec.input_size, out, init="glorot")], ("w1",), 4096)
    if spec.model == "mlp":
        assert spec.input_size is not None and spec.hidden_size is not None
        layers: list[Layer] = [
            Dense("w1", "b1", spec.input_size, spec.hidden_size, init="he"),
            ReLU(),
            Dense("w2", "b2", spec.hidden_size, out, init="glorot"),
        ]
        return Model(spec, layers, ("w1", "w2"), 4096)
    assert spec.input_shape_x is not None and spec.input_shape_y is not None
    h, w = spec.input_shape_x, spec.input_shape_y
    h2, w2 = h // 2, w // 2
    h4, w4 = h2 // 2, w2 // 2
    if h4 == 0 or w4 == 0:
        raise ModelError(f"model.input_shape_x/y = {h}x{w}: the cnn needs images of at least 4x4")
    layers = [
        Reshape((h, w, 1)),
        Conv2D("conv1_w", "conv1_b", 5, 1, 32),
        ReLU(),
        MaxPool2(),
        Conv2D("conv2_w", "conv2_b", 5, 32, 64),
        ReLU(),
        MaxPool2(),
        Reshape((h4 * w4 * 64,)),
        Dense("fc1_w", "fc1_b", h4 * w4 * 64, 512, init="he"),
        ReLU(),
        Dense("fc2_w", "fc2_b", 512, out, init="glorot"),
    ]
    # The conv2 im2col matrix dominates evaluation memory: h2*w2*25*32 floats per image; keep a batch ≲ 64 MB.
    per_image = 4 * h2 * w2 * 25 * 32
    eval_batch = max(16, min(2048, (64 << 20) // per_image))
    return Model(spec, layers, ("conv1_w", "conv2_w", "fc1_w", "fc2_w"), eval_batch)


# ----------------------------------------------------------------------------------------------- optimizers


class Optimizer:
    """Updates a dict of writable arrays in place. State is per local training (reset every round).

    Every step works in preallocated per-weight buffers: a 1.6M-parameter cnn would otherwise allocate (and
    page-fault) a dozen model-sized temporaries per minibatch, which cost more than the gradients themselves.
    """

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.t = 0
        self._scratch: Weights = {}

    def step(self, weights: Weights, grads: Mapping[str, np.ndarray]) -> None:
        self.t += 1
        for name, w in weights.items():
            self._update(name, w, grads[name])

    def _buf(self, name: str, like: np.ndarray) -> np.ndarray:
        buf = self._scratch.get(name)
        if buf is None:
            buf = self._scratch[name] = np.empty_like(like)
        return buf

    def _update(self, name: str, w: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    def _update(self, name, w, g):
        tmp = np.multiply(g, self.lr, out=self._buf(name, w))
        w -= tmp


class Momentum(Optimizer):
    """Heavy-ball momentum 0.9 (v = 0.9·v + g; w -= lr·v)."""

    beta = 0.9

    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        self.v: Weights = {}

    def _update(self, name, w, g):
        v = self.v.get(name)
        if v is None:
            v = self.v[name] = np.zeros_like(w)
        v *= self.beta
        v += g
        w -= np.multiply(v, self.lr, out=self._buf(name, w))


class Adam(Optimizer):
    """Adam (Kingma & Ba) with the Keras defaults the prototype used: beta1 0.9, beta2 0.999, eps 1e-7."""

    beta1, beta2, eps = 0.9, 0.999, 1e-7
    nesterov = False

    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        self.m: Weights = {}
        self.v: Weights = {}
        self._num: Weights = {}

    def _update(self, name, w, g):
        m = self.m.get(name)
        if m is None:
            m = self.m[name] = np.zeros_like(w)
            self.v[name] = np.zeros_like(w)
        v = self.v[name]
        b1, b2, t = self.beta1, self.beta2, self.t
        tmp = self._buf(name, w)
        m *= b1
        m += np.multiply(g, 1 - b1, out=tmp)
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        # denominator sqrt(v / (1 - b2^t)) + eps, in tmp
        np.sqrt(v, out=tmp)
        tmp *= 1 / math.sqrt(1 - b2**t)
        tmp += self.eps
        if self.nesterov:  # Dozat's Nadam, as in optax: look one momentum step ahead
            c1, c2 = b1 / (1 - b1 ** (t + 1)), (1 - b1) / (1 - b1**t)
            num = self._num.get(name)
            if num is None:
                num = self._num[name] = np.empty_like(w)
            np.multiply(g, c2 / c1, out=num)
            num += m
            num *= c1 * self.lr  # lr * (c1·m + c2·g)
        else:
            num = self._num.get(name)
            if num is None:
                num = self._num[name] = np.empty_like(w)
            np.multiply(m, self.lr / (1 - b1**t), out=num)  # lr * m / (1 - b1^t)
        np.divide(num, tmp, out=tmp)
        w -= tmp


class Nadam(Adam):
    nesterov = True


def make_optimizer(name: str, lr: float) -> Optimizer:
    classes = {"sgd": SGD, "momentum": Momentum, "adam": Adam, "nadam": Nadam}
    if name not in classes:
        raise ModelError(f"train.optim must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return classes[name](lr)


# ------------------------------------------------------------------------------------------ local training


_FLAT = "_all"  # the optimizer's one state slot in train_local: every weight is a view of one flat buffer


def _flat_copy(weights: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Weights]:
    """A float32 copy of ``weights`` in one contiguous buffer, and a view of it per weight (in their order)."""
    arrays = [np.asarray(w) for w in weights.values()]
    flat = np.empty(sum(a.size for a in arrays), np.float32)
    views: Weights = {}
    offset = 0
    for name, a in zip(weights, arrays):
        view = flat[offset : offset + a.size].reshape(a.shape)
        view[...] = a  # cast as np.array(a, dtype=np.float32) would
        views[name] = view
        offset += a.size
    return flat, views


def train_local(
    model: Model,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    optim: str,
    lr: float,
    batch_size: int,
    local_epochs: int,
    mu: float = 0.0,
    l2: float = 0.0,
    seed: int | np.random.SeedSequence,
) -> tuple[Weights, dict[str, Any]]:
    """Minibatch training from ``weights`` (left untouched); returns new float32 weights and metrics.

    Deterministic given ``seed`` (shuffling is the only randomness). With ``mu`` > 0 the FedProx proximal term
    pulls towards the starting (global) weights. ``train_loss``/``train_accuracy`` are measured on the local
    data after training, as data loss without the L2/proximal penalties.
    """
    n = len(x)
    if n == 0:
        raise ModelError("no training examples in this client's partition")
    if len(y) != n:
        raise ModelError(f"{n} training inputs but {len(y)} labels")
    y = np.asarray(y, dtype=np.int64)
    if y.min() < 0 or y.max() >= model.spec.output_size:
        raise ModelError(f"labels span {y.min()}..{y.max()}, model.output_size is {model.spec.output_size}")
    anchor = {name: np.asarray(w) for name, w in weights.items()} if mu else {}
    flat, current = _flat_copy(weights)
    model.check_weights(current, "global model")
    rng = np.random.default_rng(as_seed_sequence(seed))
    opt = make_optimizer(optim, lr)
    started = time.perf_counter()
    steps = 0
    for _ in range(local_epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            result = model.loss_and_grads(current, x[idx], y[idx], l2=l2)
            grads = result.grads
            if mu:
                _, prox = proximal_term(current, anchor, mu)
                grads = {name: g + prox[name] for name, g in grads.items()}
            # one optimizer step over all weights at once (views of `flat`): the same element-wise arithmetic as a
            # step per weight, bit for bit, without paying numpy's per-call overhead once per weight
            opt.step({_FLAT: flat}, {_FLAT: np.concatenate([np.ravel(grads[name]) for name in current])})
            steps += 1
    train_s = time.perf_counter() - started
    if not np.all(np.isfinite(flat)):
        for name, w in current.items():
            if not np.all(np.isfinite(w)):
                raise ModelError(f"training diverged: weight {name!r} is not finite (lower train.lr?)")
    loss, acc = model.evaluate(current, x, y)
    return current, {
        "num_examples": n,
        "steps": steps,
        "train_loss": loss,
        "train_accuracy": acc,
        "train_s": train_s,
    }
