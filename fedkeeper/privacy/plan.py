"""What a run with differential privacy follows: the config's `privacy` section turned into the runtime's
`PrivacySpec`, the accountant for the sampling the round loop does, δ, and the ε budget check.

Reads `scenarios.federated_learning.privacy` (`config.models.PrivacyConfig`: mode, noise_multiplier, clip_norm,
adaptive_clipping, delta, target_epsilon, sampling, secure_noise); δ defaults to 1/N^1.1 there."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedkeeper.config.errors import ConfigError, ConfigIssue

if TYPE_CHECKING:  # dp-accounting takes about 1.5 s to import (scipy): only runs with privacy pay for it
    from fedkeeper.privacy.accountant import Accountant
from fedkeeper.runtime.privacy import PrivacySpec

KEY = "scenarios.federated_learning.privacy"


def selected_count(fl: Any) -> int:
    """Clients drawn per round under fixed-size selection (over-selection included), as the round loop does."""
    per_round = fl.clients_info.num_clients_per_round
    total = fl.clients_info.total_num_clients
    return min(total, math.ceil(per_round * (1 + fl.resilience.overselect)))


@dataclass(frozen=True)
class PrivacyPlan:
    spec: PrivacySpec
    accountant: Accountant
    delta_configured: bool
    target_epsilon: float | None

    @property
    def sampling(self) -> str:
        return self.accountant.sampling

    def epsilon(self, rounds: int) -> float:
        return self.accountant.epsilon(rounds)

    def budget_stop(self, round_number: int) -> str | None:
        """Before round `round_number`: why it must not run (ε after it would exceed the target), else None."""
        if self.target_epsilon is None:
            return None
        eps = self.epsilon(round_number)
        if eps <= self.target_epsilon:
            return None
        return (f"privacy budget: ε would reach {_fmt(eps)} > target {self.target_epsilon:g} after round "
                f"{round_number}")

    def summary(self, rounds_completed: int) -> dict[str, Any]:
        """summary.json's `privacy` block (ε None when there is no noise: no finite guarantee)."""
        eps = self.epsilon(rounds_completed)
        return {"mode": self.spec.mode, "noise_multiplier": self.spec.noise_multiplier,
                "clip_norm": self.spec.clip_norm, "adaptive_clipping": self.spec.adaptive,
                "delta": self.accountant.delta, "sampling": self.sampling,
                "epsilon": eps if math.isfinite(eps) else None, "target_epsilon": self.target_epsilon,
                "accountant": f"dp-accounting RDP: {self.accountant.describe()}",
                "secure_noise": self.spec.secure_noise}


def _fmt(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:.4g}"


def plan_for(fl: Any) -> PrivacyPlan | None:
    """The plan of a federated-learning scenario (`config.models.FederatedLearning`), None when `privacy` is
    absent; ConfigError (exit 2, key path) for settings the mechanisms cannot run with. The spec is the one the
    payloads carry (`FederatedLearning.privacy_params`), so the accountant and the functions agree."""
    section = getattr(fl, "privacy", None)
    params = fl.privacy_params() if section is not None else None
    if params is None:
        return None
    try:
        spec = PrivacySpec.from_params(params, KEY)
    except ValueError as exc:
        path, _, text = str(exc).partition(": ")
        path = path.replace(f"{KEY}.count_noise_multiplier", f"{KEY}.adaptive_clipping.count_noise_multiplier")
        raise ConfigError([ConfigIssue(path, text)]) from None
    total = int(fl.clients_info.total_num_clients)
    per_round = int(fl.clients_info.num_clients_per_round)
    try:
        from fedkeeper.privacy.accountant import Accountant

        accountant = Accountant(mode=spec.mode, noise_multiplier=spec.noise_multiplier,
                                delta=float(section.delta_for(total)), sampling=section.sampling,
                                population=total, sample_size=selected_count(fl),
                                sampling_probability=per_round / total)
    except ValueError as exc:
        raise ConfigError([ConfigIssue(KEY, str(exc))]) from None
    return PrivacyPlan(spec, accountant, section.delta is not None, section.target_epsilon)
