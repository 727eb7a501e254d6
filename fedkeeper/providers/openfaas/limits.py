"""OpenFaaS (Community Edition on Kubernetes, faas-netes) stock limits: the one table validation and the docs read
(docs/platforms.md, "OpenFaaS").

Sources (checked in the projects' repositories and docs):
- timeouts: https://docs.openfaas.com/tutorials/expanded-timeouts/ and the faas-netes chart
  (`chart/openfaas/values.yaml`: `gateway.upstreamTimeout: 60s`, `gateway.readTimeout`/`writeTimeout: 65s`,
  `queueWorker.ackWait: 60s`). A call longer than the gateway's upstream timeout is cut at the gateway whatever
  the function's own `exec_timeout` (of-watchdog) says, so a stock installation runs functions for at most 60 s;
  an operator who raised the chart's timeouts says so in the cluster's `limits:`.
- memory: OpenFaaS passes `limits.memory` / `requests.memory` to the Kubernetes Deployment and sets no range of
  its own (https://docs.openfaas.com/reference/yaml/#function-memorycpu-limits); the namespace's LimitRange, if
  any, decides. No memory range here.
- concurrency: of-watchdog's `max_inflight` (https://github.com/openfaas/of-watchdog#configuration) caps the
  calls one replica runs at once and answers 429 beyond it; 0 (the default) means no cap.
- size: the function is a container image (`image`); the gateway sets no request-size limit, the watchdog's
  default `max_body` is not set either. The Community Edition allows at most 15 functions per installation
  (https://docs.openfaas.com/openfaas-pro/introduction/, "Comparison"): `deployment: shared` keeps FedKeeper at two.
"""

from __future__ import annotations

from fedkeeper.providers.limits import Limits

#: the gateway's default upstream timeout (faas-netes chart values.yaml)
GATEWAY_TIMEOUT_S = 60.0
#: what the Community Edition allows per installation
CE_MAX_FUNCTIONS = 15

STOCK = Limits(
    memory_mb=None,
    timeout_s=(1.0, GATEWAY_TIMEOUT_S),
    concurrency=(1, 1000),
    source="openfaas/faas-netes chart values.yaml (gateway.upstreamTimeout 60s); of-watchdog max_inflight",
)
