"""The knative platform: everything FedKeeper knows about it lives in this folder; it registers itself here."""

from fedkeeper.providers.knative.spec import SPEC
from fedkeeper.providers.registry import register

register(SPEC)
