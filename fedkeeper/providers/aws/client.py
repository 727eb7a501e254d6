"""boto3 sessions and Lambda clients for one cluster.

Two kinds of client: a control-plane client (deploy, list, remove) and invoke clients whose read timeout
exceeds the function's own timeout, so that a slow function is not mistaken for a dead connection. botocore's
own retries are off everywhere: the tracker's resilience policy (and tenacity for control-plane calls) decides
what is retried, and a throttled call must reach the tracker as `Throttled`, not be retried silently.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ProfileNotFound

from fedkeeper.providers.aws.config import LambdaCluster
from fedkeeper.providers.base import AuthError

#: seconds added to the function timeout for the HTTP read of a synchronous invoke
READ_TIMEOUT_SLACK_S = 30
CONNECT_TIMEOUT_S = 10
CONTROL_READ_TIMEOUT_S = 60


def make_session(cluster: str, config: LambdaCluster) -> boto3.Session:
    """Credentials from a named profile, ${ENV} keys (validated by config.py) or boto3's default chain."""
    try:
        return boto3.Session(
            profile_name=config.profile,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            aws_session_token=config.session_token,
            region_name=config.region,
        )
    except ProfileNotFound:
        raise AuthError(cluster, f"providers.aws.{cluster}.profile: AWS profile {config.profile!r} "
                                 "is not in the shared credentials/config files") from None


class LambdaClients:
    """A session's Lambda clients, created under a lock (boto3 sessions are not thread-safe)."""

    def __init__(self, cluster: str, config: LambdaCluster) -> None:
        self.cluster = cluster
        self.config = config
        self._session = make_session(cluster, config)
        self._lock = threading.Lock()
        self._control: Any = None
        self._invoke: dict[int, Any] = {}

    def _client(self, read_timeout: int, pool: int) -> Any:
        boto_config = BotoConfig(
            read_timeout=read_timeout,
            connect_timeout=CONNECT_TIMEOUT_S,
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=pool,
            user_agent_extra="fedkeeper",
        )
        return self._session.client("lambda", endpoint_url=self.config.endpoint_url,
                                    region_name=self.config.region, config=boto_config)

    @property
    def control(self) -> Any:
        with self._lock:
            if self._control is None:
                self._control = self._client(CONTROL_READ_TIMEOUT_S, 10)
            return self._control

    def for_timeout(self, function_timeout_s: int) -> Any:
        """The invoke client whose read timeout covers a function with this timeout (one per distinct timeout)."""
        read_timeout = int(function_timeout_s) + READ_TIMEOUT_SLACK_S
        with self._lock:
            client = self._invoke.get(read_timeout)
            if client is None:
                client = self._invoke[read_timeout] = self._client(read_timeout, self.config.max_inflight)
            return client

    def close(self) -> None:
        with self._lock:
            clients = [c for c in [self._control, *self._invoke.values()] if c is not None]
            self._control = None
            self._invoke.clear()
        for client in clients:
            close = getattr(client, "close", None)
            if close is not None:
                close()
