"""Tasks: a model and its data behind one interface (`base.Task`); how the functions find the one a run names.

`load_task(ref)` imports a task module (``TASK`` or ``make_task(params)``) once per process; `from_payload`
picks the payload's ``task`` or, without one, the built-in numpy model of the payload's ``model`` keys.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections import OrderedDict
from typing import Any, Mapping

from fedkeeper.runtime.tasks.base import (
    Evaluation,
    Split,
    Task,
    TaskError,
    TrainResult,
    Weights,
    WeightsSpec,
    as_evaluation,
    check_train_result,
    check_weights,
    int_seed,
    plain_metrics,
)

__all__ = ["Evaluation", "Split", "Task", "TaskError", "TrainResult", "Weights", "WeightsSpec", "as_evaluation",
           "check_train_result", "check_weights", "int_seed", "plain_metrics", "TaskRef", "load_task",
           "from_payload", "BUILTIN_MODULE"]

BUILTIN_MODULE = "fedkeeper.runtime.tasks.numpy_models"
_MODULE_PART = r"[A-Za-z_][A-Za-z0-9_]*"

#: loaded tasks by (module, params): a warm function builds its task once
_TASKS: "OrderedDict[str, Task]" = OrderedDict()
_MAX_TASKS = 4


class TaskRef:
    """What names a task: ``{"module": str, "params": {...}, "path": str | None}`` (the payload's ``task``)."""

    def __init__(self, module: str, params: Mapping[str, Any] | None = None, path: str | None = None) -> None:
        self.module, self.params, self.path = module, dict(params or {}), path

    @classmethod
    def parse(cls, raw: Any, where: str = "task") -> "TaskRef":
        if isinstance(raw, str):
            raw = {"module": raw}
        if not isinstance(raw, Mapping):
            raise TaskError(f"{where} must be a module path or an object with module and params, got {raw!r}")
        unknown = set(raw) - {"module", "params", "path", "requirements"}
        if unknown:
            raise TaskError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (module, params, path)")
        module, params, path = raw.get("module"), raw.get("params") or {}, raw.get("path")
        import re

        if not isinstance(module, str) or not re.fullmatch(rf"{_MODULE_PART}(\.{_MODULE_PART})*", module):
            raise TaskError(f"{where}.module must be a dotted module path such as mypkg.fl_task, got {module!r}")
        if not isinstance(params, Mapping):
            raise TaskError(f"{where}.params must be a mapping, got {type(params).__name__}")
        if path is not None and not isinstance(path, str):
            raise TaskError(f"{where}.path must be a folder path, got {path!r}")
        return cls(module, params, path)

    @property
    def key(self) -> str:
        return json.dumps([self.module, self.params, self.path], sort_keys=True, default=str)

    def as_params(self) -> dict[str, Any]:
        return {"module": self.module, "params": self.params, "path": self.path}


def _import(ref: TaskRef, where: str) -> Any:
    if ref.path and os.path.isdir(ref.path) and ref.path not in sys.path:
        sys.path.insert(0, ref.path)  # the local platform and validate; packaged functions carry it at the root
    try:
        return importlib.import_module(ref.module)
    except ImportError as exc:
        hint = f" (looked in {ref.path} and sys.path)" if ref.path else ""
        raise TaskError(f"{where}.module: cannot import {ref.module!r}{hint}: {exc}") from None
    except Exception as exc:  # a task module that fails while importing: its own error, named
        raise TaskError(f"{where}.module: importing {ref.module!r} failed: {type(exc).__name__}: {exc}") from None


def load_task(raw: Any, where: str = "task") -> Task:
    """The task ``raw`` names (a module path or ``{module, params, path}``), built once per process.

    TaskError (a ValueError) when the module cannot be imported, exposes neither ``TASK`` nor ``make_task``,
    refuses its params, or gives something that is not a `Task`; messages name ``<where>.module`` or
    ``<where>.params``."""
    ref = raw if isinstance(raw, TaskRef) else TaskRef.parse(raw, where)
    cached = _TASKS.get(ref.key)
    if cached is not None:
        _TASKS.move_to_end(ref.key)
        return cached
    module = _import(ref, where)
    make = getattr(module, "make_task", None)
    if callable(make):
        try:
            task = make(ref.params)
        except (TaskError, ValueError, TypeError, KeyError) as exc:
            message = str(exc).strip("'\"")
            raise TaskError(f"{where}.params: {message}") from None
    elif hasattr(module, "TASK"):
        if ref.params:
            raise TaskError(f"{where}.params: {ref.module} exposes TASK, which takes no params (give make_task)")
        task = module.TASK
    else:
        raise TaskError(f"{where}.module: {ref.module} exposes neither TASK nor make_task(params)")
    missing = [m for m in ("init", "train", "evaluate", "load_dataset", "weights_spec") if not callable(getattr(task, m, None))]
    if missing:
        raise TaskError(f"{where}.module: {ref.module} gave {type(task).__name__}, which lacks {', '.join(missing)} "
                        "(subclass fedkeeper.runtime.tasks.base.Task)")
    _TASKS[ref.key] = task
    while len(_TASKS) > _MAX_TASKS:
        _TASKS.popitem(last=False)
    return task


def from_payload(params: Mapping[str, Any], function: str) -> tuple[Task, TaskRef]:
    """The task of a function's payload: its ``task`` object, else the built-in numpy model of ``model``."""
    raw = params.get("task")
    if raw is None:
        model = params.get("model")
        if model is None:
            raise ValueError(f"{function}: params.model is required")
        if not isinstance(model, Mapping):
            raise ValueError(f"{function}: params.model must be Mapping, got {model!r}")
        from fedkeeper.runtime.tasks import numpy_models

        ref = TaskRef(BUILTIN_MODULE, dict(model))
        cached = _TASKS.get(ref.key)
        if cached is None:  # built here (not through load_task) so the messages keep naming params.model
            cached = _TASKS[ref.key] = numpy_models.make_task(model, "params.model")
            while len(_TASKS) > _MAX_TASKS:
                _TASKS.popitem(last=False)
        return cached, ref
    ref = TaskRef.parse(raw, f"{function}: params.task")
    return load_task(ref, f"{function}: params.task"), ref
