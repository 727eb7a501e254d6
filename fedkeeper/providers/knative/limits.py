"""Knative Serving's stock limits: the one table validation and the docs read (docs/platforms.md, "Knative").

Sources (knative/serving `config/core/configmaps/defaults.yaml`, documented at
https://knative.dev/docs/serving/configuration/config-defaults/):
- `revision-timeout-seconds: "300"` (the default of a revision's `timeoutSeconds`) and
  `max-revision-timeout-seconds: "600"` (the largest a revision may ask for; the webhook refuses more);
- `container-concurrency: "0"` (no cap) and `container-concurrency-max-limit: "1000"` (the largest
  `containerConcurrency`);
- memory: Knative sets no range (`revision-memory-limit` is unset by default); the namespace's LimitRange decides.
Scale to zero (`enable-scale-to-zero: "true"`, `scale-to-zero-grace-period: "30s"`, config-autoscaler) makes the
first request after an idle spell start a pod: a cold start, which the entry marks (X-FedKeeper-Cold).
"""

from __future__ import annotations

from fedkeeper.providers.limits import Limits

#: config-defaults max-revision-timeout-seconds
MAX_TIMEOUT_S = 600.0

STOCK = Limits(
    memory_mb=None,
    timeout_s=(1.0, MAX_TIMEOUT_S),
    concurrency=(1, 1000),
    source="knative/serving config-defaults (max-revision-timeout-seconds 600, container-concurrency-max-limit "
           "1000)",
)
