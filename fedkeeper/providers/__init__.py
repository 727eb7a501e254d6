"""FaaS platforms behind one interface (`base.Provider`), one folder per platform, found through `registry`."""

from __future__ import annotations

from fedkeeper.providers.registry import create, provider_class  # noqa: F401
