"""runtime/model.py: gradients against finite differences for every layer type, models, optimizers, training."""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.runtime import model as M

EPS = 1e-6


def _numeric_grad(f, arr: np.ndarray, idx: tuple[int, ...]) -> float:
    old = arr[idx]
    arr[idx] = old + EPS
    up = f()
    arr[idx] = old - EPS
    down = f()
    arr[idx] = old
    return (up - down) / (2 * EPS)


def _sample_indices(shape: tuple[int, ...], rng: np.random.Generator, count: int = 12) -> list[tuple[int, ...]]:
    size = int(np.prod(shape))
    flat = rng.choice(size, size=min(count, size), replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


def _assert_close(analytic: float, numeric: float, what: str) -> None:
    assert abs(analytic - numeric) <= 1e-6 + 1e-5 * max(abs(analytic), abs(numeric)), (
        f"{what}: analytic {analytic!r} vs numeric {numeric!r}"
    )


def _check_layer(layer: M.Layer, x: np.ndarray, rng: np.random.Generator, params: dict | None = None) -> None:
    """Check d(sum(out * R))/d(input, params) for a random R, in float64."""
    params = params if params is not None else {k: v.astype(np.float64) for k, v in layer.init(rng).items()}
    out, _ = layer.forward(params, x)
    r = rng.standard_normal(out.shape)

    def f() -> float:
        o, _ = layer.forward(params, x)
        return float(np.sum(o * r))

    _, cache = layer.forward(params, x)
    dx, grads = layer.backward(params, cache, r, need_dx=True)
    assert dx is not None and dx.shape == x.shape
    for idx in _sample_indices(x.shape, rng):
        _assert_close(dx[idx], _numeric_grad(f, x, idx), f"{type(layer).__name__} d/dx{idx}")
    for name, arr in params.items():
        assert grads[name].shape == arr.shape
        for idx in _sample_indices(arr.shape, rng):
            _assert_close(grads[name][idx], _numeric_grad(f, arr, idx), f"{type(layer).__name__} d/d{name}{idx}")


def test_dense_gradients():
    rng = np.random.default_rng(1)
    layer = M.Dense("w", "b", 7, 5, init="he")
    params = {"w": rng.standard_normal((7, 5)), "b": rng.standard_normal(5)}
    _check_layer(layer, rng.standard_normal((4, 7)), rng, params)


def test_relu_gradients_away_from_the_kink():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 9))
    x[np.abs(x) < 0.05] = 0.5  # finite differences straddling 0 would be meaningless
    _check_layer(M.ReLU(), x, rng, {})


@pytest.mark.parametrize("k", [3, 5])
def test_conv_im2col_gradients(k):
    rng = np.random.default_rng(3 + k)
    layer = M.Conv2D("cw", "cb", k, 2, 3)
    params = {"cw": rng.standard_normal((k, k, 2, 3)), "cb": rng.standard_normal(3)}
    _check_layer(layer, rng.standard_normal((2, 6, 5, 2)), rng, params)


def test_conv_matches_direct_convolution():
    """im2col result equals the textbook sum over kernel offsets ('same' padding, cross-correlation)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 7, 3))
    w = rng.standard_normal((5, 5, 3, 4))
    b = rng.standard_normal(4)
    out, _ = M.Conv2D("w", "b", 5, 3, 4).forward({"w": w, "b": b}, x)
    xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    expect = np.zeros((2, 6, 7, 4)) + b
    for i in range(6):
        for j in range(7):
            patch = xp[:, i : i + 5, j : j + 5, :]
            expect[:, i, j, :] += np.einsum("nhwc,hwco->no", patch, w)
    np.testing.assert_allclose(out, expect, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 6, 4, 3), (2, 5, 7, 2)])
def test_maxpool_gradients_including_odd_sizes(shape):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    layer = M.MaxPool2()
    out, _ = layer.forward({}, x)
    assert out.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    assert out[0, 0, 0, 0] == x[0, :2, :2, 0].max()
    _check_layer(layer, x, rng, {})


def test_softmax_cross_entropy_gradient_and_value():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((6, 4)) * 3
    y = rng.integers(0, 4, 6)
    loss, grad = M.softmax_cross_entropy(logits, y)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(6), y])), rel=1e-12)
    for idx in _sample_indices(logits.shape, rng, 24):
        _assert_close(grad[idx], _numeric_grad(lambda: M.softmax_cross_entropy(logits, y)[0], logits, idx), f"CE{idx}")
    big, _ = M.softmax_cross_entropy(np.array([[1000.0, -1000.0]]), np.array([1]))
    assert np.isfinite(big) and big == pytest.approx(2000.0)


def _check_model(mdl: M.Model, x: np.ndarray, y: np.ndarray, l2: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = {k: v.astype(np.float64) + 0.01 * rng.standard_normal(v.shape) for k, v in mdl.init(seed).items()}
    res = mdl.loss_and_grads(weights, x, y, l2=l2)
    assert list(res.grads) == list(weights)

    def f() -> float:
        return mdl.loss_and_grads(weights, x, y, l2=l2).loss

    for name, arr in weights.items():
        for idx in _sample_indices(arr.shape, rng, 6):
            _assert_close(res.grads[name][idx], _numeric_grad(f, arr, idx), f"{mdl.spec.model} d/d{name}{idx}")


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_logreg_and_mlp_gradients_with_l2(l2):
    rng = np.random.default_rng(7)
    x, y = rng.random((5, 6)), rng.integers(0, 3, 5)
    _check_model(M.build_model({"model": "logreg", "input_size": 6, "output_size": 3}), x, y, l2, 1)
    _check_model(M.build_model({"model": "mlp", "input_size": 6, "hidden_size": 4, "output_size": 3}), x, y, l2, 2)


def test_cnn_gradients_with_l2():
    rng = np.random.default_rng(8)
    mdl = M.build_model({"model": "cnn", "input_shape_x": 6, "input_shape_y": 5, "output_size": 3})
    x, y = rng.random((2, 30)), rng.integers(0, 3, 2)
    _check_model(mdl, x, y, 0.05, 3)


def test_l2_skips_biases():
    mdl = M.build_model({"model": "logreg", "input_size": 3, "output_size": 2})
    w = {"w1": np.zeros((3, 2)), "b1": np.array([5.0, -5.0])}
    x, y = np.ones((1, 3)), np.array([0])
    assert mdl.loss_and_grads(w, x, y, l2=1.0).loss == pytest.approx(mdl.loss_and_grads(w, x, y).loss)


def test_fedprox_term_value_and_gradient():
    rng = np.random.default_rng(9)
    w = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(2)}
    anchor = {k: v + rng.standard_normal(v.shape) for k, v in w.items()}
    value, grads = M.proximal_term(w, anchor, 0.3)
    assert value == pytest.approx(0.15 * sum(float(np.sum((w[k] - anchor[k]) ** 2)) for k in w))
    for name, arr in w.items():
        for idx in _sample_indices(arr.shape, rng, 5):
            _assert_close(grads[name][idx], _numeric_grad(lambda: M.proximal_term(w, anchor, 0.3)[0], arr, idx), name)


def test_cnn_shapes_match_the_prototype_mnist_network():
    mdl = M.build_model({"model": "cnn", "input_shape_x": 28, "input_shape_y": 28, "output_size": 10})
    shapes = {k: v[0] for k, v in mdl.expected().items()}
    assert shapes == {
        "conv1_w": (5, 5, 1, 32), "conv1_b": (32,),
        "conv2_w": (5, 5, 32, 64), "conv2_b": (64,),
        "fc1_w": (7 * 7 * 64, 512), "fc1_b": (512,),
        "fc2_w": (512, 10), "fc2_b": (10,),
    }  # fmt: skip
    w = mdl.init(0)
    assert mdl.forward(w, np.random.default_rng(0).random((3, 784), dtype=np.float32)).shape == (3, 10)


def test_init_is_deterministic_float32_and_matches_expected():
    mdl = M.build_model({"model": "mlp", "input_size": 64, "hidden_size": 32, "output_size": 10})
    a, b, c = mdl.init(5), mdl.init(5), mdl.init(6)
    assert list(a) == ["w1", "b1", "w2", "b2"]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["w1"], c["w1"])
    assert M.expected_spec(a) == mdl.expected()
    assert all(v.dtype == np.float32 for v in a.values())
    mdl.check_weights(a)
    with pytest.raises(M.ModelError, match="w1"):
        mdl.check_weights({**a, "w1": a["w1"][:10]})
    with pytest.raises(M.ModelError, match="float64"):
        mdl.check_weights({**a, "b2": a["b2"].astype(np.float64)})


@pytest.mark.parametrize(
    "params, match",
    [
        ({"model": "resnet", "output_size": 10}, "model.model"),
        ({"model": "mlp", "input_size": 64, "output_size": 10}, "model.hidden_size"),
        ({"model": "mlp", "input_size": 64, "hidden_size": "32", "output_size": 10}, "model.hidden_size"),
        ({"model": "logreg", "input_size": True, "output_size": 10}, "model.input_size"),
        ({"model": "cnn", "input_shape_x": 28, "output_size": 10}, "model.input_shape_y"),
        ({"model": "cnn", "input_shape_x": 3, "input_shape_y": 3, "output_size": 10}, "at least 4x4"),
    ],
)
def test_model_spec_errors_name_the_key(params, match):
    with pytest.raises(M.ModelError, match=match):
        M.build_model(params)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"optim": "rmsprop"}, "train.optim"),
        ({"lr": 0}, "train.lr"),
        ({"lr": float("nan")}, "train.lr"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"local_epochs": 1.5}, "train.local_epochs"),
        ({"mu": -1}, "train.mu"),
    ],
)
def test_train_config_errors_name_the_key(params, match):
    with pytest.raises(M.ModelError, match=match):
        M.TrainConfig.from_params(params)


def _toy_problem():
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((3, 8)) * 2
    y = rng.integers(0, 3, 150)
    x = (centers[y] + 0.5 * rng.standard_normal((150, 8))).astype(np.float32)
    return x, y


@pytest.mark.parametrize("optim, lr", [("sgd", 0.1), ("momentum", 0.05), ("adam", 0.01), ("nadam", 0.01)])
def test_every_optimizer_learns_a_separable_problem(optim, lr):
    x, y = _toy_problem()
    mdl = M.build_model({"model": "mlp", "input_size": 8, "hidden_size": 16, "output_size": 3})
    w0 = mdl.init(0)
    loss0, _ = mdl.evaluate(w0, x, y)
    w1, metrics = M.train_local(mdl, w0, x, y, optim=optim, lr=lr, batch_size=10, local_epochs=5, seed=1)
    assert metrics["train_loss"] < loss0 / 3
    assert metrics["train_accuracy"] > 0.95
    assert metrics["num_examples"] == 150 and metrics["steps"] == 5 * 15
    assert all(v.dtype == np.float32 and v.flags.writeable for v in w1.values())


def test_adam_and_nadam_first_steps_follow_their_formulas():
    """Bias correction makes Adam's first step lr·sign(g); Nadam's look-ahead adds b1(1-b1)/(1-b1^2) to it."""
    g = np.array([2.0, -3.0, 0.5, -0.1], np.float32)
    for cls, factor in ((M.Adam, 1.0), (M.Nadam, 1.0 + 0.9 * 0.1 / (1 - 0.9**2))):
        opt = cls(0.01)
        w = {"a": np.zeros(4, np.float32)}
        opt.step(w, {"a": g})
        np.testing.assert_allclose(w["a"], -0.01 * factor * np.sign(g), rtol=1e-4)


def test_training_is_deterministic_and_leaves_the_input_untouched():
    x, y = _toy_problem()
    mdl = M.build_model({"model": "mlp", "input_size": 8, "hidden_size": 16, "output_size": 3})
    w0 = mdl.init(0)
    before = {k: v.copy() for k, v in w0.items()}
    kw = dict(optim="adam", lr=0.01, batch_size=7, local_epochs=2)
    a, _ = M.train_local(mdl, w0, x, y, seed=M.derive_seed(42, 3, 7), **kw)
    b, _ = M.train_local(mdl, w0, x, y, seed=M.derive_seed(42, 3, 7), **kw)
    c, _ = M.train_local(mdl, w0, x, y, seed=M.derive_seed(42, 3, 8), **kw)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["w1"], c["w1"])
    assert all(np.array_equal(before[k], w0[k]) for k in w0)


def test_fedprox_keeps_weights_closer_to_the_global_model():
    x, y = _toy_problem()
    mdl = M.build_model({"model": "mlp", "input_size": 8, "hidden_size": 16, "output_size": 3})
    w0 = mdl.init(0)
    kw = dict(optim="sgd", lr=0.1, batch_size=10, local_epochs=5, seed=1)
    plain, _ = M.train_local(mdl, w0, x, y, mu=0.0, **kw)
    prox, _ = M.train_local(mdl, w0, x, y, mu=1.0, **kw)

    def dist(w):
        return sum(float(np.sum((w[k] - w0[k]) ** 2)) for k in w)

    assert dist(prox) < 0.8 * dist(plain)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_training_rejects_bad_inputs():
    mdl = M.build_model({"model": "logreg", "input_size": 4, "output_size": 3})
    w = mdl.init(0)
    kw = dict(optim="sgd", lr=0.1, batch_size=2, local_epochs=1, seed=0)
    with pytest.raises(M.ModelError, match="no training examples"):
        M.train_local(mdl, w, np.zeros((0, 4), np.float32), np.zeros(0, int), **kw)
    with pytest.raises(M.ModelError, match="labels span"):
        M.train_local(mdl, w, np.zeros((2, 4), np.float32), np.array([0, 3]), **kw)
    with pytest.raises(M.ModelError, match=r"needs \(N, 4\)"):
        M.train_local(mdl, w, np.zeros((2, 5), np.float32), np.array([0, 1]), **kw)
    with pytest.raises(M.ModelError, match="diverged"):
        M.train_local(mdl, w, np.full((2, 4), 1e30, np.float32), np.array([0, 1]), **{**kw, "lr": 1e30})


def test_evaluate_batches_give_the_same_answer_as_one_pass():
    mdl = M.build_model({"model": "mlp", "input_size": 8, "hidden_size": 16, "output_size": 3})
    x, y = _toy_problem()
    w = mdl.init(1)
    whole = mdl.evaluate(w, x, y)
    mdl.eval_batch = 7
    parts = mdl.evaluate(w, x, y)
    # float32 per-batch sums round differently from one pass: equal to float32 precision, not bit for bit
    assert parts[1] == whole[1] and parts[0] == pytest.approx(whole[0], rel=1e-6)
    assert np.array_equal(mdl.predict(w, x), mdl.forward(w, x).argmax(axis=1))


def test_function_code_imports_only_numpy_pymongo_and_the_standard_library():
    """The runtime and the handlers are copied into every function zip: nothing else is installed there."""
    import ast
    import sys
    from pathlib import Path

    root = Path(M.__file__).resolve().parents[1]
    files = [root / "runtime" / f for f in ("model.py", "data.py")]
    files += sorted((root / "runtime" / "strategies").glob("*.py"))
    files += [root.parent / "functions" / name / "handler.py" for name in ("fl_client", "fl_server_aggregator", "nodeinfo")]
    allowed = set(sys.stdlib_module_names) | {"__future__", "numpy", "pymongo", "bson", "gridfs"}
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or name.startswith("fedkeeper.runtime"), f"{path.name} imports {name}"
