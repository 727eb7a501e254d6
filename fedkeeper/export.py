"""A trained global model out of the store: a plain ``.npz`` of its weights plus a ``<out>.json`` metadata record.

The record is the training-results entry an FL repository keeps (run, round, accuracy, loss, model and data spec,
config digest, FedKeeper version, model sha256, created), so the model can be used and checked without FedKeeper's
store. Reading it back needs only numpy::

    from fedkeeper.export import load
    model = load("model.npz")          # weights + metadata; the sha256 is checked
    loss, accuracy = model.evaluate()  # on the run's test split, as the aggregator evaluated it
    model.evaluate(x, y)               # or on your own arrays (rows of input_size features, integer labels)

The ``.npz`` holds numeric arrays only (``np.load(path, allow_pickle=False)`` reads it); ``model_sha256`` is the
digest of the weights in FedKeeper's blob encoding, which ``load`` recomputes from the arrays.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkeeper import __version__
from fedkeeper.errors import UsageProblem
from fedkeeper.runtime import weights as W

FORMAT = "fedkeeper-model/1"


class ExportError(UsageProblem):
    """The asked model cannot be exported or read back (exit 2): the message says what is available instead."""


def metadata_path(out: Path | str) -> Path:
    """``model.npz`` → ``model.npz.json``: the record sits beside the weights under the same name."""
    return Path(f"{out}.json")


@dataclass(frozen=True)
class ExportedModel:
    """Weights and metadata of one exported global model."""

    weights: dict[str, np.ndarray]
    metadata: dict[str, Any]

    @property
    def round(self) -> int:
        return int(self.metadata["round"])

    @property
    def accuracy(self) -> float | None:
        return self.metadata.get("accuracy")

    def evaluate(self, x: np.ndarray | None = None, y: np.ndarray | None = None) -> tuple[float, float]:
        """(loss, accuracy) of the model rebuilt with ``fedkeeper.runtime.model``: on the run's test split
        (``fedkeeper.runtime.data``, the data spec in the metadata) by default, or on the arrays given."""
        from fedkeeper.runtime import data, model

        mdl = model.build_model(model.ModelSpec.from_params(self.metadata["model"], "metadata.model"))
        if (x is None) != (y is None):
            raise ValueError("give both x and y, or neither (the run's test split)")
        if x is None:
            test = data.load_split(data.DataSpec.from_params(self.metadata["data"], "metadata.data"), "test")
            x, y = test.x, test.y
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, accuracy = mdl.evaluate(self.weights, np.asarray(x), np.asarray(y))
        return float(loss), float(accuracy)


def load(path: Path | str) -> ExportedModel:
    """Read an exported model (``path`` is the ``.npz``; its record is ``<path>.json``) and check that the weights
    are the ones the record names (``model_sha256``); ExportError otherwise."""
    path = Path(path)
    try:
        metadata = json.loads(metadata_path(path).read_text(encoding="utf-8"))
        with np.load(path, allow_pickle=False) as npz:
            weights = {name: npz[name] for name in metadata.get("arrays") or npz.files}
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot read the exported model {path}: {exc}") from None
    digest = W.digest_of(W.encode(weights))
    if digest != metadata.get("model_sha256"):
        raise ExportError(f"{path}: the weights' sha256 {digest} is not the {metadata.get('model_sha256')} "
                          f"its record {metadata_path(path)} names")
    return ExportedModel(weights, metadata)


def available_rounds(store: Any, run_id: str) -> list[int]:
    """Rounds whose global model is still kept (``keep_models`` prunes older blobs; their documents stay)."""
    return [int(d["round"]) for d in store.list_model_docs(run_id) if not d.get("pruned")]


def pick_round(store: Any, run_id: str, *, round: int | None, best: bool) -> int:
    """The round to export: the one asked, the best kept one (``best``: highest accuracy, the later on a tie), or
    the last kept one; ExportError naming the kept rounds when the asked one is gone."""
    docs = {int(d["round"]): d for d in store.list_model_docs(run_id)}
    kept = available_rounds(store, run_id)
    if not kept:
        raise ExportError(f"run {run_id} has no global model in the store")
    if round is not None:
        if round not in kept:
            what = "was removed (keep_models)" if round in docs else "does not exist"
            raise ExportError(f"the model of run {run_id} round {round} {what}; rounds available: "
                              f"{', '.join(map(str, kept))}")
        return round
    if best:
        return max(kept, key=lambda r: (_number((docs[r].get("metrics") or {}).get("accuracy")), r))
    return kept[-1]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("-inf")


def export_model(store: Any, run: Mapping[str, Any], out: Path | str, *, round: int | None = None,
                 best: bool = False) -> dict[str, Any]:
    """Write the global model of one round of ``run`` (its runs document) to ``out`` (.npz) and ``<out>.json``;
    returns the metadata. The blob's sha256 is checked on the way out (``BlobStore.read_model``)."""
    from fedkeeper.config.models import FederatedLearning
    from fedkeeper.runtime.blobstore import CorruptModel, ModelMissing
    from fedkeeper.scenarios.federated_learning import data_spec, model_spec

    run_id = str(run["_id"])
    out = Path(out)
    if out.suffix != ".npz":
        raise ExportError(f"--out {out}: the weights are written as .npz; name the file *.npz")
    chosen = pick_round(store, run_id, round=round, best=best)
    fl_section = ((run.get("config") or {}).get("scenarios") or {}).get("federated_learning")
    if not isinstance(fl_section, Mapping):
        raise ExportError(f"run {run_id} has no federated_learning config in the store")
    fl = FederatedLearning.model_validate(fl_section)
    try:
        weights, doc = store.blobs.read_model(run_id, chosen)
    except ModelMissing as exc:
        raise ExportError(str(exc)) from None
    except CorruptModel as exc:
        from fedkeeper.errors import StoreFailure

        raise StoreFailure(str(exc)) from None
    metrics = doc.get("metrics") or {}
    metadata = {
        "format": FORMAT, "run": run_id, "experiment": run.get("experiment"), "round": chosen,
        "accuracy": metrics.get("accuracy"), "loss": metrics.get("loss"),
        "model": model_spec(fl), "data": data_spec(fl), "seed": fl.seed,
        "config_digest": run.get("config_digest"), "fedkeeper_version": __version__,
        "model_sha256": doc.get("sha256"), "num_params": doc.get("num_params"),
        "arrays": list(weights), "model_created": doc.get("created"), "created": time.time(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:  # a file object: np.savez would add .npz to a name without it
        np.savez(handle, **{name: np.asarray(arr) for name, arr in weights.items()})
    metadata_path(out).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return metadata
