"""Config: YAML → a validated `Config` (models, sources and `${ENV}`, legacy keys, checks, views).

`fedkeeper.config` is the one import for the rest of FedKeeper; each step lives in its own module here.
"""

from fedkeeper.config.loader import *  # noqa: F401,F403
from fedkeeper.config.loader import __all__, _unwrap, is_secret_key  # noqa: F401
