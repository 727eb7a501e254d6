"""docs/platforms.md agrees with the platforms' tables (fedkeeper/providers/<kind>/limits.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkeeper.providers import registry

DOC = (Path(__file__).resolve().parents[1] / "docs" / "platforms.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", [k for k in registry.kinds() if registry.get(k).kinds])
def test_every_kind_of_the_table_is_on_the_page(kind: str) -> None:
    for name, runtime in registry.get(kind).kinds.items():
        if runtime.refused and name.startswith("python") and name[len("python"):len("python") + 1].isdigit():
            continue  # old Lambda runtimes are listed as a range
        assert f"`{name}`" in DOC, f"{kind}: kind {name} is not in docs/platforms.md"


def test_the_stock_limits_on_the_page_are_the_tables() -> None:
    ow = registry.get("openwhisk").limits()
    assert ow.memory_mb and ow.timeout_s
    assert f"| memory | {ow.memory_mb[0]}–{ow.memory_mb[1]} MB |" in DOC
    assert f"| timeout | {ow.timeout_s[0] * 1000:g}–{ow.timeout_s[1] * 1000:g} ms |" in DOC
    aws = registry.get("aws").limits()
    assert aws.memory_mb and aws.timeout_s
    assert f"memory {aws.memory_mb[0]}–{aws.memory_mb[1]} MB, timeout ≤ {aws.timeout_s[1]:g} s" in DOC
    gcf = registry.get("google").limits()
    assert gcf.memory_mb and gcf.timeout_s and gcf.concurrency
    assert f"memory {gcf.memory_mb[0]}–{gcf.memory_mb[1]} MB, timeout ≤ {gcf.timeout_s[1]:g} s, concurrency " \
           f"{gcf.concurrency[0]}–{gcf.concurrency[1]}" in DOC
