"""The functions' handlers as the tests load them: each load is a fresh module, as a new worker process imports it,
so its per-process caches start empty; and the small training task the fl_client tests share."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"

# A small task: fast to train, enough to tell one model from another.
SMALL_MLP = {"model": "mlp", "input_size": 64, "hidden_size": 8, "output_size": 10}
SMALL_TRAIN = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 1, "mu": 0.0, "l2": 0.0}
DIGITS_IID = {"dataset": "digits", "partition": "iid"}


def load_handler(function: str, module_name: str) -> ModuleType:
    """``functions/<function>/handler.py`` as a new module named ``module_name`` (unique per caller: a module of
    that name is not shared with another test's)."""
    spec = importlib.util.spec_from_file_location(module_name, FUNCTIONS / function / "handler.py")
    assert spec is not None and spec.loader is not None, f"no handler for {function}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
