"""The azure platform: everything FedKeeper knows about it lives in this folder; it registers itself here."""

from fedkeeper.providers.azure.spec import SPEC
from fedkeeper.providers.registry import register

register(SPEC)
