"""train_local steps its optimizer once over one flat buffer of all weights (issue 18: numpy's per-call overhead
dominated a small client's step). It must give the bits of the per-weight loop it replaced, for every optimizer,
with FedProx and L2, over several steps and epochs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper.runtime import model as M

ARCHS = [{"model": "mlp", "input_size": 6, "hidden_size": 5, "output_size": 3},
         {"model": "logreg", "input_size": 4, "output_size": 2}]


def _per_weight_reference(mdl, weights, x, y, *, optim, lr, batch_size, local_epochs, mu, l2, seed):
    """The loop train_local ran before: one optimizer update per weight array."""
    anchor = {name: np.asarray(w) for name, w in weights.items()}
    current = {name: np.array(w, dtype=np.float32, copy=True) for name, w in weights.items()}
    rng = np.random.default_rng(M.as_seed_sequence(seed))
    opt = M.make_optimizer(optim, lr)
    y = np.asarray(y, dtype=np.int64)
    for _ in range(local_epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start: start + batch_size]
            grads = mdl.loss_and_grads(current, x[idx], y[idx], l2=l2).grads
            if mu:
                _, prox = M.proximal_term(current, anchor, mu)
                grads = {name: g + prox[name] for name, g in grads.items()}
            opt.step(current, grads)
    return current, mdl.evaluate(current, x, y)


@settings(max_examples=40, deadline=None)
@given(arch=st.sampled_from(ARCHS), optim=st.sampled_from(M.OPTIMIZERS), mu=st.sampled_from([0.0, 0.3]),
       l2=st.sampled_from([0.0, 0.01]), n=st.integers(1, 23), batch_size=st.integers(1, 8),
       local_epochs=st.integers(1, 2), seed=st.integers(0, 2**32))
def test_flat_training_gives_the_bits_of_per_weight_steps(arch, optim, mu, l2, n, batch_size, local_epochs, seed):
    mdl = M.build_model(arch)
    weights = mdl.init(seed % 1000)
    data = np.random.default_rng(seed)
    x = data.standard_normal((n, mdl.spec.num_features)).astype(np.float32)
    y = data.integers(0, mdl.spec.output_size, n)
    kw = dict(optim=optim, lr=0.05, batch_size=batch_size, local_epochs=local_epochs, mu=mu, l2=l2,
              seed=M.derive_seed(seed, 1, 2))
    got, metrics = M.train_local(mdl, weights, x, y, **kw)
    want, (loss, accuracy) = _per_weight_reference(mdl, weights, x, y, **kw)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        assert got[name].tobytes() == want[name].tobytes(), name
    assert (metrics["train_loss"], metrics["train_accuracy"]) == (loss, accuracy)
    assert all(np.array_equal(weights[k], mdl.init(seed % 1000)[k]) for k in weights)  # the input is untouched
