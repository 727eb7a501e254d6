"""Differential privacy inside the functions: clipping, Gaussian noise, adaptive clipping (numpy only).

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"): each client's
update is reduced to its delta from the previous global model, the delta is clipped to global L2 norm C, every
client counts once (uniform weighting: a client's influence is bounded by C whatever its example count), and
Gaussian noise N(0, (z·C)²) is added to the sum, which is then divided by the number of clients (or by the
expected number under Poisson sampling: `PrivacySpec.expected_clients`, the paper's fixed-denominator estimator,
because there the realised count itself depends on who is in the data).

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping"): C follows the
γ-quantile of the clients' delta norms, C ← C·exp(−η·(b̂ − γ)), where b̂ is the noised fraction of clients whose
delta was not clipped. The count is released with noise too (std σ_b on the count), so the noise multiplier z the
accountant sees is split between the two: z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) goes on the delta.

Local DP: each client clips its own delta and adds its own noise (`local_privatize`) before it stores its update,
so the aggregator (and the store) only ever see noised updates.

Noise comes from a numpy Generator seeded by (seed, round, client): the same config and seed give the same model
bit for bit, and a resumed run draws the same noise as an uninterrupted one. Anyone who knows the seed can
subtract the noise, so this is for experiments; `secure_noise: true` draws from the OS's entropy instead (not
reproducible) for deployments where the guarantee must hold against whoever can read the config.
"""

from __future__ import annotations

import math
from enum import Enum
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the strategies package is imported by the aggregator, not needed here at run time
    from fedkeeper.runtime.strategies.base import ClientUpdate

Weights = dict[str, np.ndarray]

class DPMode(str, Enum):
    """Who adds the noise: the aggregator (`central`) or each client (`local`). A str Enum, not StrEnum: the
    functions also run on Python 3.10 runtimes."""

    CENTRAL = "central"
    LOCAL = "local"


MODES = tuple(mode.value for mode in DPMode)
#: domain tags that keep the noise streams apart from each other and from client selection (tracker.rank_clients)
_DELTA_NOISE_TAG = 0xD9_0001
_COUNT_NOISE_TAG = 0xD9_0002
#: Andrew et al. 2021 recommend σ_b = expected clients per round / 20 for the count of unclipped clients
COUNT_NOISE_SHARE = 0.05
#: a clipped delta is scaled to C·(1 − 2⁻³⁶), not C: any way of summing its squares (numpy's, the reader's) then
#: finds a norm <= C, never C plus a rounding error; a smaller sensitivity only strengthens the guarantee
_CLIP_MARGIN = 1.0 - 2.0 ** -36


@dataclass(frozen=True)
class PrivacySpec:
    """What the aggregator (central) or a client (local) needs to privatize updates; a payload as `as_params()`.

    `count_noise_multiplier` is σ_b, the standard deviation of the Gaussian noise on the count of unclipped
    clients (None: `COUNT_NOISE_SHARE` × the number of clients of the round). `expected_clients`: divide the
    noisy sums by this fixed number instead of the round's count (set under Poisson sampling)."""

    mode: str = "central"
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_noise_multiplier: float | None = None
    seed: int = 0
    secure_noise: bool = False
    expected_clients: float | None = None

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], where: str = "privacy") -> "PrivacySpec":
        """The spec from a payload's dict; ValueError naming `where.key` for an unknown or bad key."""
        if not isinstance(params, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {type(params).__name__}")
        known = {f.name for f in fields(cls)}
        for key in params:
            if key not in known:
                raise ValueError(f"{where}.{key}: unknown privacy parameter (known: {', '.join(sorted(known))})")
        try:
            return cls(**dict(params))
        except _SpecError as exc:
            raise ValueError(f"{where}.{exc.key}: {exc.message}") from None

    def as_params(self) -> dict[str, Any]:
        return asdict(self)


class _SpecError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _number(spec: PrivacySpec, key: str, *, low: float, low_ok: bool, high: float | None = None,
            high_ok: bool = True, optional: bool = False) -> None:
    value = getattr(spec, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _SpecError(key, f"expected a finite number, got {value!r}")
    if value < low or (value == low and not low_ok):
        raise _SpecError(key, f"must be {'>=' if low_ok else '>'} {low:g}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_ok)):
        raise _SpecError(key, f"must be {'<=' if high_ok else '<'} {high:g}, got {value!r}")


def _check(spec: PrivacySpec) -> None:
    if spec.mode not in MODES:
        raise _SpecError("mode", f"must be one of {', '.join(MODES)}, got {spec.mode!r}")
    _number(spec, "noise_multiplier", low=0.0, low_ok=True)
    _number(spec, "clip_norm", low=0.0, low_ok=False)
    _number(spec, "target_quantile", low=0.0, low_ok=True, high=1.0)
    _number(spec, "clip_learning_rate", low=0.0, low_ok=False)
    _number(spec, "count_noise_multiplier", low=0.0, low_ok=False, optional=True)
    _number(spec, "expected_clients", low=0.0, low_ok=False, optional=True)
    for key in ("adaptive", "secure_noise"):
        if not isinstance(getattr(spec, key), bool):
            raise _SpecError(key, f"expected true or false, got {getattr(spec, key)!r}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or spec.seed < 0:
        raise _SpecError("seed", f"expected a non-negative integer, got {spec.seed!r}")
    if spec.adaptive and spec.mode != "central":
        raise _SpecError("adaptive", "adaptive clipping needs mode central (the count of unclipped clients is "
                                     "noised by the aggregator)")
    if spec.adaptive and spec.count_noise_multiplier is not None:
        delta_noise_multiplier(spec.noise_multiplier, spec.count_noise_multiplier)  # raises when 2σ_b <= z


def delta_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the share of the noise multiplier z left for the delta when the count of
    unclipped clients is released with noise std σ_b (Andrew et al. 2021, Theorem 1); 0 for z = 0."""
    z, sigma_b = float(noise_multiplier), float(count_noise_std)
    if z == 0.0:
        return 0.0
    if 2.0 * sigma_b <= z:
        raise _SpecError("count_noise_multiplier",
                         f"the count noise σ_b = {sigma_b:g} leaves nothing of noise_multiplier {z:g} for the "
                         f"delta: adaptive clipping needs 2·σ_b > noise_multiplier")
    return (z ** -2 - (2.0 * sigma_b) ** -2) ** -0.5


def noise_seed(seed: int, round_number: int, client_id: int | None = None, tag: int = _DELTA_NOISE_TAG
               ) -> np.random.SeedSequence:
    """The noise stream of one round's aggregation (client_id None) or of one client's update in a round."""
    who = 0 if client_id is None else int(client_id) + 1
    return np.random.SeedSequence([int(seed), int(round_number), who, int(tag)])


def _generator(spec: PrivacySpec, round_number: int, client_id: int | None, tag: int) -> np.random.Generator:
    if spec.secure_noise:
        return np.random.default_rng()  # fresh OS entropy: not reproducible, and no seed can undo it
    return np.random.default_rng(noise_seed(spec.seed, round_number, client_id, tag))


def _global_norm(arrays: Iterable[np.ndarray]) -> float:
    """The L2 norm of all arrays together, without overflow for any finite float64 values."""
    arrays = list(arrays)
    peak = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    if peak == 0.0:
        return 0.0
    total = sum(float(np.sum(np.square(a / peak))) for a in arrays if a.size)
    return peak * math.sqrt(total)


def clip_delta(new: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray], clip_norm: float
               ) -> tuple[Weights, float]:
    """(new − previous in float64, scaled to global L2 norm <= clip_norm; the norm before clipping).

    A delta within C·(1 − 2⁻³⁶) is returned as it is; a longer one is scaled onto that radius."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}")
    if list(new) != list(previous):
        raise ValueError(f"the update holds {list(new)}, the model has {list(previous)}")
    delta = {}
    for name, old in previous.items():
        if tuple(new[name].shape) != tuple(old.shape):
            raise ValueError(f"{name!r} has shape {list(new[name].shape)}, the model {list(old.shape)}")
        d = np.asarray(new[name], np.float64) - np.asarray(old, np.float64)
        if not np.all(np.isfinite(d)):
            raise ValueError(f"the delta of {name!r} is not finite")
        delta[name] = d
    norm = _global_norm(delta.values())
    bound = clip_norm * _CLIP_MARGIN
    if norm <= bound:
        return delta, norm
    factor = bound / norm
    while True:  # rounding may leave the scaled norm a few ulps above the bound: shrink until it is not
        clipped = {name: d * factor for name, d in delta.items()}
        if _global_norm(clipped.values()) <= bound:
            return clipped, norm
        factor *= _CLIP_MARGIN


def _noise(rng: np.random.Generator, like: Mapping[str, np.ndarray], std: float) -> Weights:
    """Gaussian noise of standard deviation `std` for each array, drawn in the model's key order."""
    return {name: rng.normal(0.0, std, size=np.shape(a)) if std > 0 else np.zeros(np.shape(a)) for name, a in
            like.items()}


def _cast(previous: Mapping[str, np.ndarray], step: Mapping[str, np.ndarray]) -> Weights:
    out = {}
    for name, old in previous.items():
        value = (np.asarray(old, np.float64) + step[name]).astype(old.dtype)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"the privatized {name!r} is not finite")
        out[name] = value
    return out


class CentralDP:
    """One round of DP-FedAvg in the aggregator: clip each delta, sum them (each client once), add noise once.

    Memory O(model): one float64 running sum; updates are consumed one at a time in ascending client id."""

    def __init__(self, spec: PrivacySpec, previous: Mapping[str, np.ndarray], clip_norm: float,
                 round: int) -> None:  # noqa: A002 - the interface's name
        if spec.mode != "central":
            raise ValueError(f"CentralDP needs mode central, got {spec.mode!r}")
        if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
            raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
        self.spec, self.previous, self.clip_norm, self.round = spec, dict(previous), float(clip_norm), int(round)
        self._sum: Weights = {name: np.zeros(np.shape(a), np.float64) for name, a in self.previous.items()}
        self.count = 0
        self.unclipped = 0
        self._last_client: int | None = None

    def add(self, update: "ClientUpdate") -> float:
        """Clip the update's delta and add it; returns its norm before clipping (not to be released)."""
        if self._last_client is not None and update.client_id <= self._last_client:
            raise ValueError(f"update of client {update.client_id} added after client {self._last_client}: "
                             "add in ascending client-id order")
        clipped, norm = clip_delta(update.weights, self.previous, self.clip_norm)
        for name, d in clipped.items():
            self._sum[name] += d
        self.count += 1
        self.unclipped += int(norm <= self.clip_norm)
        self._last_client = update.client_id
        return norm

    def add_sum(self, sums: Mapping[str, np.ndarray], count: int, unclipped: int) -> None:
        """Fold in clipped deltas summed elsewhere: the leaves of tree aggregation (runtime/partials.py) clip each
        client's delta and sum them; the noise is still added once, here, in ``result``."""
        for name in self._sum:
            self._sum[name] += np.asarray(sums[name], np.float64)
        self.count += int(count)
        self.unclipped += int(unclipped)

    def result(self) -> tuple[Weights, float, dict[str, Any]]:
        """(previous + (Σ clipped + noise) / n in the model's dtypes, the next round's clip norm, what to report).

        n is the number of clients added, or `expected_clients` when set (then a round with no client still
        releases a noised step, as the accountant assumes)."""
        spec = self.spec
        denominator = spec.expected_clients if spec.expected_clients is not None else float(self.count)
        if denominator <= 0:
            raise ValueError("no updates were added")
        z_delta, sigma_b = spec.noise_multiplier, 0.0
        if spec.adaptive:
            sigma_b = spec.count_noise_multiplier if spec.count_noise_multiplier is not None else \
                COUNT_NOISE_SHARE * denominator
            z_delta = delta_noise_multiplier(spec.noise_multiplier, sigma_b) if spec.noise_multiplier else 0.0
            if spec.noise_multiplier == 0:
                sigma_b = 0.0
        std = z_delta * self.clip_norm
        noise = _noise(_generator(spec, self.round, None, _DELTA_NOISE_TAG), self._sum, std)
        step = {name: (s + noise[name]) / denominator for name, s in self._sum.items()}
        model = _cast(self.previous, step)
        info: dict[str, Any] = {"clip_norm": self.clip_norm, "num_clients": self.count,
                                "noise_std": std, "delta_noise_multiplier": z_delta}
        new_clip = self.clip_norm
        if spec.adaptive:
            count_rng = _generator(spec, self.round, None, _COUNT_NOISE_TAG)
            noisy = self.unclipped + (float(count_rng.normal(0.0, sigma_b)) if sigma_b > 0 else 0.0)
            fraction = noisy / denominator  # b̂: only the noised fraction is released
            new_clip = adaptive_clip_norm(self.clip_norm, fraction, spec.target_quantile, spec.clip_learning_rate)
            info.update(unclipped_fraction=fraction, count_noise_std=sigma_b, next_clip_norm=new_clip)
        return model, new_clip, info


def adaptive_clip_norm(clip_norm: float, unclipped_fraction: float, target_quantile: float,
                       learning_rate: float) -> float:
    """Geometric update of Andrew et al. 2021: C·exp(−η·(b̂ − γ)); grows when fewer than γ were unclipped."""
    return float(clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile)))


def local_privatize(new: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray], spec: PrivacySpec,
                    round: int, client_id: int, attempt: int) -> Weights:  # noqa: A002
    """What a client stores under local DP: previous + clip(new − previous) + N(0, (z·C)²), in the model's dtypes.

    The noise depends on (seed, round, client), not on `attempt`: a retried client trains the same update
    (training is seeded), so it stores the same noised values and the server learns nothing from a second
    copy; and the model does not depend on which attempt landed."""
    del attempt  # see above: deliberately not part of the noise seed
    if spec.mode != "local":
        raise ValueError(f"local_privatize needs mode local, got {spec.mode!r}")
    clipped, _norm = clip_delta(new, previous, spec.clip_norm)
    noise = _noise(_generator(spec, round, client_id, _DELTA_NOISE_TAG), clipped,
                   spec.noise_multiplier * spec.clip_norm)
    return _cast(previous, {name: d + noise[name] for name, d in clipped.items()})
