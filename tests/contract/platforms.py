"""Harnesses of the provider contract suite: one per registered platform kind, found in `HARNESSES` by kind.

A harness starts what its platform needs on 127.0.0.1 and stops all of it afterwards — the fake OpenWhisk
controller (tests/fake_openwhisk.py), the fake Cloud Functions admin API with the functions-framework runtime
(tests/fake_gcf.py), moto with a sandbox runner (tests/fake_lambda.py), nothing for `local` — and hands out
cluster configs with canary secrets planted where that platform keeps its credentials. It makes the platform
produce each outcome of the contract the same way the real one would:

    outcome            how
    success            the probe function (tests/functions/gcf_probe) echoes its params
    function error     the probe raises (`{"mode": "raise"}`)
    timeout            the probe sleeps past a short function timeout (`short_timeout_s`)
    missing function   a name never deployed, or removed by another provider instance
    throttling         `throttle(n)`: the platform refuses the next n invocations for load
    rejected creds     `rejected_credentials()`: a cluster config whose credentials the platform refuses

An outcome a platform cannot produce at all is listed in `cannot` with the reason (its test is skipped with that
reason); `polls_by_id` / `polls_after_restart` say whether a rebuilt `Invocation` still polls to its result.
A platform that registers in `fedkeeper.providers.registry` and adds a harness here gets the whole suite.
"""

from __future__ import annotations

import contextlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fedkeeper import packaging
from fedkeeper.providers import registry
from fedkeeper.providers.base import LABEL_DIGEST, LABEL_EXPERIMENT, LABEL_FUNCTION, DeploySpec, Provider, spec_digest

PROBE = Path(__file__).resolve().parent.parent / "functions" / "gcf_probe"
CLUSTER = "contract"
EXPERIMENT = "ctexp"

# canaries planted in DeploySpec.env (the store URL's password and a token): they must reach the function's
# environment and nothing else
MONGO_PASSWORD = "CANARYmongoPWct41"
ENV_TOKEN = "CANARYenvTOKENct41"
ENV = {"FK_MONGO_URL": f"mongodb://fk:{MONGO_PASSWORD}@127.0.0.1:9/?authSource=admin", "FK_MONGO_DB": "fk_contract",
       "FK_API_TOKEN": ENV_TOKEN}
ENV_SECRETS = (MONGO_PASSWORD, ENV_TOKEN, ENV["FK_MONGO_URL"])


class Outcome(str, Enum):
    SUCCESS = "success"
    FUNCTION_ERROR = "function error"
    TIMEOUT = "timeout"
    MISSING = "missing function"
    THROTTLED = "throttling"
    AUTH = "rejected credentials"


class Harness(ABC):
    """One platform, started for a test module. Subclasses set the class attributes and the hooks below."""

    kind: ClassVar[str]
    #: a function timeout (s) the platform accepts and that a test can wait out
    short_timeout_s: ClassVar[float]
    #: a rebuilt Invocation (cluster, name, activation id only) polls to the result on the same provider object
    polls_by_id: ClassVar[bool]
    #: ... and on a new provider object, as after an orchestrator restart (else the poll says LOST)
    polls_after_restart: ClassVar[bool]
    #: outcomes this platform cannot produce, with the reason
    cannot: ClassVar[dict[Outcome, str]] = {}
    #: starting the platform takes long (a real Ray instance): its part of the suite is marked slow
    slow: ClassVar[bool] = False

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        #: canaries planted in the cluster configs this harness hands out (the rejected ones included)
        self.secrets: list[str] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Harness":
        try:
            self.start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # ------------------------------------------------------------------ what every harness provides

    @abstractmethod
    def start(self) -> None:
        """Start the platform's fake; register its teardown on `self._stack`."""

    @abstractmethod
    def config(self) -> Any:
        """The typed cluster config of the running platform, with working (canary) credentials."""

    def provider(self, config: Any = None) -> Provider:
        """A new provider object (another process's view when called twice): same cluster, same workdir."""
        return registry.create(self.kind, CLUSTER, self.config() if config is None else config,
                               workdir=self.workdir / "orchestrator")

    def throttle(self, n: int) -> None:
        """The platform refuses the next `n` invocations for load."""
        raise NotImplementedError(self.cannot.get(Outcome.THROTTLED, "no throttle control"))

    @contextlib.contextmanager
    def rejected_credentials(self) -> Iterator[Any]:
        """A cluster config whose credentials the platform refuses."""
        raise NotImplementedError(self.cannot.get(Outcome.AUTH, "no credentials to reject"))
        yield  # pragma: no cover

    @abstractmethod
    def invocation_bodies(self) -> list[bytes]:
        """Every invocation payload the platform received, as sent."""

    @abstractmethod
    def request_lines(self) -> list[str]:
        """URL and headers (but `Authorization`, which carries the credential by design) of every request."""

    @abstractmethod
    def function_logs(self) -> str:
        """Everything the deployed functions wrote to the platform's logs."""

    def spec(self, name: str, *, experiment: str = EXPERIMENT, memory_mb: int = 256, timeout_s: float = 30.0,
             env: dict[str, str] | None = None, labelled: bool = True) -> DeploySpec:
        """The probe as `Fabric.deploy_spec` would describe it; `labelled=False` makes someone else's function."""
        artifact = packaging.build(PROBE, self.kind, packaging.options_for(self.config()))
        env = dict(ENV if env is None else env)
        digest = spec_digest(artifact.sha256, memory_mb, timeout_s, 1, env, {})
        labels = {LABEL_EXPERIMENT: experiment, LABEL_FUNCTION: artifact.function, LABEL_DIGEST: digest} \
            if labelled else {}
        return DeploySpec(name=name, function=artifact.function, artifact=artifact.data, digest=digest,
                          memory_mb=memory_mb, timeout_s=timeout_s, env=env, labels=labels)


# ---------------------------------------------------------------------------------------------- local


class LocalHarness(Harness):
    """Worker processes on this machine: nothing to start; the payloads are read where the pool takes them."""

    kind = "local"
    short_timeout_s = 0.3
    polls_by_id = True  # the activation records live in the provider's pool
    polls_after_restart = False  # ... in memory only: a new process has none (LOST; the tracker re-invokes)
    cannot = {
        Outcome.THROTTLED: "the local platform queues calls on its workers; it never refuses one for load",
        Outcome.AUTH: "the local platform has no credentials",
    }

    def start(self) -> None:
        from fedkeeper.providers.local.pool import WorkerPool

        self._bodies: list[bytes] = []
        real_submit = WorkerPool.submit

        def submit(pool: WorkerPool, fn: Any, params_json: bytes, **options: Any) -> Any:
            self._bodies.append(bytes(params_json))
            return real_submit(pool, fn, params_json, **options)  # options: the latency profile's (P1)

        mp = self._stack.enter_context(pytest.MonkeyPatch.context())
        mp.setattr(WorkerPool, "submit", submit)

    def config(self) -> Any:
        from fedkeeper.providers.local.config import LocalCluster

        return LocalCluster(concurrency=2, keep_warm_s=5.0)

    def invocation_bodies(self) -> list[bytes]:
        return list(self._bodies)

    def request_lines(self) -> list[str]:
        return []  # no network: calls go over the workers' private pipes

    def function_logs(self) -> str:
        root = self.workdir / "orchestrator" / ".fedkeeper" / "local"
        return "\n".join(p.read_text(errors="replace") for p in sorted(root.rglob("worker.log")))


# ---------------------------------------------------------------------------------------------- OpenWhisk


OW_KEY = "CANARYowKEYct41zz9QxWvB2sLkPmN0aTrY"
OW_BAD_KEY = "CANARYowBADct41yy8RwXuC3tMjOnP1bSs"


class OpenWhiskHarness(Harness):
    """The fake controller (tests/fake_openwhisk.py), which runs the uploaded zips; the key is a canary."""

    kind = "openwhisk"
    short_timeout_s = 0.3  # the controller's minimum is 100 ms
    polls_by_id = True
    polls_after_restart = True  # activation records are the controller's: any process can read them

    def start(self) -> None:
        from fake_openwhisk import FakeOpenWhisk

        self.fake = FakeOpenWhisk(auth=f"{uuid.uuid4()}:{OW_KEY}", workdir=self.workdir / "fake-openwhisk")
        self.fake.start()
        self._stack.callback(self.fake.stop)
        self.secrets += [OW_KEY, self.fake.auth, OW_BAD_KEY]

    def config(self) -> Any:
        from fedkeeper.providers.openwhisk.config import OpenWhiskCluster

        return OpenWhiskCluster(api_host=self.fake.url, auth=self.fake.auth, request_timeout_s=10.0)

    def throttle(self, n: int) -> None:
        self.fake.throttle(n, retry_after=1.0)

    @contextlib.contextmanager
    def rejected_credentials(self) -> Iterator[Any]:
        from fedkeeper.providers.openwhisk.config import OpenWhiskCluster

        yield OpenWhiskCluster(api_host=self.fake.url, auth=f"{uuid.uuid4()}:{OW_BAD_KEY}", request_timeout_s=10.0)

    def invocation_bodies(self) -> list[bytes]:
        return [r.body for r in self.fake.requests_to("POST", "/actions/")]

    def request_lines(self) -> list[str]:
        return [f"{r.method} {r.url} " + repr({k: v for k, v in r.headers.items() if k.lower() != "authorization"})
                for r in self.fake.requests_to()]

    def function_logs(self) -> str:
        with self.fake._lock:
            records = list(self.fake.activations.values())
        return "\n".join(line for record in records for line in record.get("logs") or [])


# ---------------------------------------------------------------------------------------------- AWS Lambda


AWS_KEY_ID = "AKIACONTRACTGOOD0041"
AWS_SECRET = "CANARYawsSECRETct41aB3dE5fG7hJ9kL1mN3pQ"
AWS_BAD_KEY_ID = "AKIACANARYBADct41000"
AWS_BAD_SECRET = "CANARYawsBADct41xY2zA4bC6dE8fG0hJ2kL4m"


class LambdaHarness(Harness):
    """moto's Lambda plus the sandbox runner of tests/fake_lambda.py; the access keys are canaries."""

    kind = "aws"
    short_timeout_s = 1.0  # Lambda counts whole seconds, at least 1
    polls_by_id = False  # a synchronous call has no record to look up: only its future knows the outcome
    polls_after_restart = False

    def start(self) -> None:
        from fake_lambda import FakeLambda

        self.fake = FakeLambda(self.workdir / "fake-lambda", access_key_ids={AWS_KEY_ID})
        self.fake.start()
        self._stack.callback(self.fake.stop)
        self.secrets += [AWS_SECRET, AWS_BAD_KEY_ID, AWS_BAD_SECRET]

    def _cluster(self, key_id: str, secret: str) -> Any:
        from fedkeeper.providers.aws.config import LambdaCluster

        from fake_lambda import REGION

        return LambdaCluster(region=REGION, role_arn=self.fake.role_arn, access_key_id=key_id,
                             secret_access_key=secret, vendor_wheels=False, max_inflight=8)

    def config(self) -> Any:
        return self._cluster(AWS_KEY_ID, AWS_SECRET)

    def throttle(self, n: int) -> None:
        self.fake.throttle(n, retry_after=1.0)

    @contextlib.contextmanager
    def rejected_credentials(self) -> Iterator[Any]:
        yield self._cluster(AWS_BAD_KEY_ID, AWS_BAD_SECRET)

    def invocation_bodies(self) -> list[bytes]:
        return [r.body for r in self.fake.invocations]

    def request_lines(self) -> list[str]:
        return [f"{r.method} {r.url} {r.headers!r}" for r in self.fake.requests]

    def function_logs(self) -> str:
        return "\n".join(self.fake.logs.values())


# ---------------------------------------------------------------------------------------------- Google Cloud Functions


GCP_PROJECT, GCP_REGION = "fk-contract", "europe-west1"
GCP_KEY_ID = "CANARYgcpKEYIDct41abcdef0123456789"
GCP_BAD_KEY_ID = "CANARYgcpBADIDct41abcdef0123456789"


class GcfHarness(Harness):
    """The fake admin API and functions-framework runtime (tests/fake_gcf.py), with access and ID tokens required:
    the provider signs in with an inline service account whose key is a canary; names resolve to 127.0.0.1 only."""

    kind = "google"
    short_timeout_s = 1.0  # whole seconds
    polls_by_id = False  # an HTTP call to a function URL cannot be looked up later: only its future knows
    polls_after_restart = False

    def start(self) -> None:
        from fake_gcf import FakeGcf, loopback_only

        self._stack.enter_context(loopback_only())
        self.fake = FakeGcf(workdir=self.workdir / "fake-gcf", pending_polls=0)  # operations done at once
        self.fake.start()
        self._stack.callback(self.fake.close)
        self.fake.require_access_token = self.fake.require_id_token = True
        self.info = self._service_account(GCP_PROJECT, GCP_KEY_ID)

    def _service_account(self, project: str, key_id: str) -> dict[str, Any]:
        """A service-account key (registered with the fake) whose private key and key id are canaries."""
        info = self.fake.service_account(self.workdir / f"sa-{project}.json", project)
        info["private_key_id"] = key_id
        body = info["private_key"].strip().splitlines()[2:-1]  # the first base64 line is a common ASN.1 header
        self.secrets += [key_id, info["private_key"], *body]
        return info

    def _cluster(self, info: dict[str, Any]) -> Any:
        from fedkeeper.providers.google.config import GcfCluster

        return GcfCluster(project_id=GCP_PROJECT, region=GCP_REGION, service_account_info=info,
                          api_endpoint=self.fake.endpoint, id_token=True, max_inflight=8)

    def config(self) -> Any:
        return self._cluster(self.info)

    def throttle(self, n: int) -> None:
        with self.fake._lock:
            self.fake.throttle_next = n

    @contextlib.contextmanager
    def rejected_credentials(self) -> Iterator[Any]:
        rogue = self._service_account("fk-rogue", GCP_BAD_KEY_ID)
        with self.fake._lock:  # a key Google does not know (deleted, or of another project's account)
            del self.fake.service_accounts[rogue["client_email"]]
        yield self._cluster(rogue)

    def invocation_bodies(self) -> list[bytes]:
        return [r.body for r in self.fake.invocations]

    def request_lines(self) -> list[str]:
        return [f"{r.method} {r.url} " + repr({k: v for k, v in r.headers.items() if k.lower() != "authorization"})
                for r in self.fake.received]

    def function_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.fake.workdir.glob("*.log")))


# ---------------------------------------------------------------------------------------------- Ray


class RayHarness(Harness):
    """A real Ray instance on this machine (ray.init: 2 CPUs, no dashboard, its files under the test's workdir),
    shared by every provider object of the process, stopped at the end."""

    kind = "ray"
    slow = True  # ray.init takes about 8-10 s on a 2-core machine
    short_timeout_s = 1.0
    polls_by_id = True  # the registry actor keeps activation records
    polls_after_restart = True  # ... and it is a detached actor: any driver of the cluster reads them
    cannot = {
        Outcome.THROTTLED: "Ray queues calls until resources are free; it never refuses one for load",
        Outcome.AUTH: "a Ray cluster has no per-call credentials (access is reaching its address)",
    }

    def start(self) -> None:
        import ray

        if ray.is_initialized():
            raise RuntimeError("a Ray instance is already initialised in this process")
        self.ray_dir = Path("/tmp") / f"fkray-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths must fit 107 bytes
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="fk-contract",
                 _temp_dir=str(self.ray_dir))
        self._stack.callback(lambda: __import__("shutil").rmtree(self.ray_dir, ignore_errors=True))
        self._stack.callback(ray.shutdown)
        self._bodies: list[bytes] = []
        import json

        from fedkeeper.providers.ray.provider import RayProvider

        real_invoke = RayProvider.invoke

        def invoke(provider: RayProvider, name: str, payload: dict) -> Any:
            self._bodies.append(json.dumps(payload).encode())
            return real_invoke(provider, name, payload)

        mp = self._stack.enter_context(pytest.MonkeyPatch.context())
        mp.setattr(RayProvider, "invoke", invoke)

    def config(self) -> Any:
        from fedkeeper.providers.ray.config import RayCluster

        return RayCluster(address="auto", namespace="fk-contract", function_num_cpus=0.5, keep_warm_s=30.0,
                          max_instances=2)

    def invocation_bodies(self) -> list[bytes]:
        return list(self._bodies)

    def request_lines(self) -> list[str]:
        return []  # no HTTP: Ray's own protocol between processes of this machine

    def function_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.ray_dir.rglob("worker-*.err"))
                         + sorted(self.ray_dir.rglob("worker-*.out")))


# ---------------------------------------------------------------------------------------------- OpenFaaS


OF_PASSWORD = "CANARYofPASSct41hT7uV9wX1yZ3"
OF_BAD_PASSWORD = "CANARYofBADct41gS6tU8vW0xY2"


class _ContainerHarness(Harness):
    """What the container-platform harnesses share: a fake of tests/fake_containers.py's family, started with a
    canary credential, whose recorded requests are shown without their Authorization header."""

    #: the good and the refused credential (canaries)
    credential: ClassVar[str]
    bad_credential: ClassVar[str]

    @abstractmethod
    def _fake(self) -> Any:
        """The platform's fake, not yet started, accepting `credential`."""

    @abstractmethod
    def _cluster(self, credential: str) -> Any:
        """The cluster config of the running fake, with `credential`."""

    def _shows_body(self, path: str) -> bool:
        """Whether a recorded request's body goes into `request_lines` (the deploy requests)."""
        return False

    def start(self) -> None:
        self.fake = self._fake()
        self.fake.start()
        self._stack.callback(self.fake.stop)
        self.secrets += [self.credential, self.bad_credential]

    def config(self) -> Any:
        return self._cluster(self.credential)

    def throttle(self, n: int) -> None:
        self.fake.throttle(n)

    @contextlib.contextmanager
    def rejected_credentials(self) -> Iterator[Any]:
        yield self._cluster(self.bad_credential)

    def invocation_bodies(self) -> list[bytes]:
        return [r.body for r in self.fake.invocation_requests()]

    def request_lines(self) -> list[str]:
        with self.fake._lock:
            recorded = list(self.fake.requests)
        return [f"{r.method} {r.url} " + repr({k: v for k, v in r.headers.items() if k.lower() != "authorization"})
                + (r.body.decode("utf-8", "replace") if self._shows_body(r.path) else "") for r in recorded]

    def function_logs(self) -> str:
        return self.fake.logs()


class OpenFaasHarness(_ContainerHarness):
    """The fake gateway (tests/fake_openfaas.py), which runs the images the build recipe makes of the zips;
    asynchronous calls with callbacks to the provider's receiver (the mixed experiment test covers sync calls).
    The basic-auth password is a canary."""

    kind = "openfaas"
    short_timeout_s = 1.0  # of-watchdog timeouts are durations; FedKeeper writes whole seconds
    polls_by_id = True  # the callback lands in this provider object's receiver, kept by call id
    polls_after_restart = False  # ... and nowhere else: OpenFaaS keeps no results (LOST; the tracker re-invokes)
    credential, bad_credential = OF_PASSWORD, OF_BAD_PASSWORD

    def _fake(self) -> Any:
        from fake_openfaas import FakeOpenFaaS

        return FakeOpenFaaS(self.workdir / "fake-openfaas", password=OF_PASSWORD)

    def _cluster(self, credential: str) -> Any:
        from fedkeeper.providers.openfaas.config import OpenFaasCluster

        return OpenFaasCluster(gateway=self.fake.url, password=credential, image=self.fake.image_template,
                               invocation="async", max_inflight=8, request_timeout_s=10.0)

    def _shows_body(self, path: str) -> bool:
        return path.startswith("/system/functions")


# ---------------------------------------------------------------------------------------------- Knative


KN_TOKEN = "CANARYknTOKENct41pQ8rS0tU2vW4xY6"
KN_BAD_TOKEN = "CANARYknBADct41oP7qR9sT1uV3wX5"


class KnativeHarness(_ContainerHarness):
    """The fake Kubernetes API and ingress (tests/fake_knative.py), whose pods run the images the build recipe makes
    of the zips, scaled from zero on demand; the bearer token is a canary. Calls go through `ingress:` with the
    route's Host, as on a cluster without DNS for its domain."""

    kind = "knative"
    short_timeout_s = 1.0  # timeoutSeconds is whole seconds
    polls_by_id = False  # a call over the route cannot be looked up later: only its future knows
    polls_after_restart = False
    credential, bad_credential = KN_TOKEN, KN_BAD_TOKEN

    def _fake(self) -> Any:
        from fake_knative import FakeKnative

        return FakeKnative(self.workdir / "fake-knative", token=KN_TOKEN)

    def _cluster(self, credential: str) -> Any:
        from fedkeeper.providers.knative.config import KnativeCluster

        return KnativeCluster(api_server=self.fake.api_url, token=credential, ingress=self.fake.ingress_url,
                              namespace="fk-contract", image=self.fake.image_template, max_inflight=8,
                              request_timeout_s=10.0)

    def _shows_body(self, path: str) -> bool:
        return "/services" in path


# ---------------------------------------------------------------------------------------------- Azure Functions


AZ_TENANT, AZ_CLIENT = "fk-tenant", "11111111-2222-3333-4444-555555555555"
AZ_SECRET = "CANARYazSECRETct41Qw8Er7Ty6Ui5Op4"
AZ_BAD_SECRET = "CANARYazBADct41Lk3Jh2Gf1Ds0Az9"
AZ_STORAGE = "DefaultEndpointsProtocol=https;AccountName=fk;AccountKey=CANARYazSTORAGEct41Mn8Bv7Cx6=="


class AzureHarness(Harness):
    """Entra ID, ARM, Kudu and the Functions host of tests/fake_azure.py, which runs the deployed v2 app in this
    process; the client secret and the storage connection string are canaries."""

    kind = "azure"
    short_timeout_s = 1.0  # host.json functionTimeout counts whole seconds
    polls_by_id = False  # an HTTP call to a function app cannot be looked up later: only its future knows
    polls_after_restart = False

    def start(self) -> None:
        from fake_azure import FakeAzure

        self.fake = FakeAzure(self.workdir / "fake-azure", tenant=AZ_TENANT, client_id=AZ_CLIENT,
                              client_secret=AZ_SECRET).start()
        self._stack.callback(self.fake.stop)
        self.secrets += [AZ_SECRET, AZ_BAD_SECRET, AZ_STORAGE]

    def _cluster(self, secret: str) -> Any:
        from fedkeeper.providers.azure.config import AzureCluster

        return AzureCluster(subscription_id="00000000-0000-0000-0000-0000000000ct", resource_group="fk-contract",
                            function_app="fkct", location="westeurope", tenant_id=AZ_TENANT, client_id=AZ_CLIENT,
                            client_secret=secret, storage_secret=AZ_STORAGE, management_endpoint=self.fake.url,
                            authority_host=self.fake.url, max_inflight=8, request_timeout_s=10.0)

    def config(self) -> Any:
        return self._cluster(AZ_SECRET)

    def throttle(self, n: int) -> None:
        with self.fake._lock:
            self.fake.throttle_next = n

    @contextlib.contextmanager
    def rejected_credentials(self) -> Iterator[Any]:
        yield self._cluster(AZ_BAD_SECRET)

    def invocation_bodies(self) -> list[bytes]:
        return [r.body for r in self.fake.invocations]

    def request_lines(self) -> list[str]:
        by_design = ("authorization", "x-functions-key")  # each carries a credential where it belongs
        return [f"{r.method} {r.url} " + repr({k: v for k, v in r.headers.items() if k.lower() not in by_design})
                for r in self.fake.requests]

    def function_logs(self) -> str:
        return "\n".join(self.fake.logs)


HARNESSES: dict[str, type[Harness]] = {h.kind: h for h in (LocalHarness, OpenWhiskHarness, LambdaHarness, GcfHarness,
                                                             RayHarness, OpenFaasHarness, KnativeHarness,
                                                             AzureHarness)}
