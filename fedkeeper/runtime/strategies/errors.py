"""The error every strategy raises, and the bound on example counts (shared by the mean and the update checks)."""

from __future__ import annotations

#: the largest example count one update may carry: every count up to 2**53 is exact in float64, and weights are
#: float64 (an int64 count would overflow in the sums; a float count above this would round)
MAX_EXAMPLES = 2**53


class StrategyError(ValueError):
    """A parameter, an update or a server state does not fit the strategy; nothing was changed.

    ``parameter`` names the strategy parameter at fault (None when the fault is not a parameter), so that the
    config checks can point at the key path."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class NonFiniteMean(StrategyError):
    """The mean came out NaN or ±Inf: a non-finite value in an update (when the aggregation left the per-update
    NaN/Inf scan to its sums: ``runtime.admission.deferred_mean``), or finite values whose mean overflows the
    model's dtype."""
