"""The orchestrator's MongoDB state: connection, the embedded nx-27017 server, and the repository."""

from fedkeeper.store.embedded import EmbeddedServer, EmbeddedServerError, NxServer  # noqa: F401
from fedkeeper.store.repository import *  # noqa: F401,F403
from fedkeeper.store.repository import Store, open_store  # noqa: F401
