"""docs/strategies.md names every registered strategy, each of its parameters and its default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedkeeper.runtime.strategies import STRATEGIES, strategy_parameters

DOC = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"


def _section(text: str, name: str) -> str:
    """The text under the ### heading that names ``name`` (up to the next heading)."""
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        if heading.startswith("### ") and f"`{name}`" in heading:
            return body
    raise AssertionError(f"docs/strategies.md has no ### heading naming `{name}`")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_its_parameters_and_defaults_are_documented(name):
    body = _section(DOC.read_text(encoding="utf-8"), name)
    numbers = {float(m) for m in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])", body)}
    for key, (default, _) in strategy_parameters(name).items():
        assert f"`{key}`" in body, f"{name}: parameter {key} is not documented"
        if default is None:
            assert "null" in body
        else:
            assert float(default) in numbers, f"{name}: default {key} = {default} is not in its section"
    assert re.search(r"(19|20)\d\d", body) or name in {"fedyogi", "fedadagrad", "multikrum"}, "the paper's year"


def test_the_privacy_section_points_to_its_document():
    assert re.search(r"^## Differential privacy\n\n.*privacy\.md", DOC.read_text(encoding="utf-8"), flags=re.M)
