"""Inputs shared by the strategy tests: small random models, rounds of client updates, poisoned rounds.

Only data lives here; each test file writes its own reference computation from its paper's formulas.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedkeeper.runtime.strategies import ClientUpdate

SHAPES = {"w1": (6, 5), "b1": (5,), "w2": (5, 3)}


def model(rng: np.random.Generator, shapes: Mapping[str, tuple[int, ...]] = SHAPES,
          dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


def updates(rng: np.random.Generator, previous: Mapping[str, np.ndarray], count: int,
            spread: float = 0.3) -> list[ClientUpdate]:
    """``count`` updates near ``previous``, with random distinct client ids (ascending) and example counts."""
    ids = sorted(int(i) for i in rng.choice(10 * count + 10, size=count, replace=False))
    return [ClientUpdate(cid, int(rng.integers(1, 2000)),
                         {k: (v + spread * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in previous.items()})
            for cid in ids]


def flat(weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """One float64 vector of all arrays in model order (the paper's view of a model as a point in ℝᵈ)."""
    return np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in weights.values()])


def unflat(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, pos = {}, 0
    for k, a in like.items():
        out[k] = vector[pos : pos + a.size].reshape(a.shape)
        pos += a.size
    return out


def poisoned_round(attack: str, honest: int = 10, seed: int = 0):
    """(previous, updates, honest mean as a float64 vector, honest radius): ``honest`` clients move the model by
    about 1 per coordinate towards a common point (noise 0.02); the last client attacks:
    ``huge`` sends 1e6 in every coordinate, ``sign_flip`` sends ten times the honest step backwards, and claims as
    many examples as an honest client."""
    rng = np.random.default_rng(seed)
    previous = model(rng)
    target = {k: v + np.float32(1.0) + 0.2 * rng.standard_normal(v.shape).astype(np.float32)
              for k, v in previous.items()}
    good = [ClientUpdate(c, 500, {k: (t + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)
                                  for k, t in target.items()}) for c in range(honest)]
    mean = np.mean([flat(u.weights) for u in good], axis=0)
    if attack == "huge":
        bad = {k: np.full(v.shape, 1e6, np.float32) for k, v in previous.items()}
    elif attack == "sign_flip":
        step = unflat(mean - flat(previous), previous)
        bad = {k: (previous[k] - 10.0 * step[k]).astype(np.float32) for k in previous}
    else:
        raise ValueError(attack)
    radius = max(np.linalg.norm(flat(u.weights) - mean) for u in good)
    return previous, [*good, ClientUpdate(honest, 500, bad)], mean, radius


def distance_to(weights: Mapping[str, np.ndarray], vector: np.ndarray) -> float:
    return float(np.linalg.norm(flat(weights) - vector))
