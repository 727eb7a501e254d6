"""`report` over several runs and `report --sweep`: labels by what differs, groups over seeds, mean ± std."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedkeeper.results import compare, pricing
from fedkeeper.results.report import build_report
from fedkeeper.results.run_folders import load_run
from report_sweep_support import GRID, write_run, write_sweep

PRICES = pricing.price_table()
LR = "scenarios.federated_learning.model_params.lr"


def _grouped(logs: Path, run_ids: list[str], **kw: Any) -> dict[str, Any]:
    folders = [load_run(logs / r) for r in run_ids]
    return compare.compare(folders, [build_report(f, PRICES, target=kw.get("target")) for f in folders], PRICES,
                           **kw)


def test_flatten_and_varying_keys_leave_out_the_seed() -> None:
    a = {"x": {"lr": 0.1, "seed": 1}, "scenarios": {"federated_learning": {"seed": 1}}, "l": [1, 2]}
    b = {"x": {"lr": 0.2, "seed": 1}, "scenarios": {"federated_learning": {"seed": 7}}, "l": [1, 2]}
    assert compare.flatten(a) == {"x.lr": 0.1, "x.seed": 1, "scenarios.federated_learning.seed": 1, "l": [1, 2]}
    assert compare.varying_keys([a, b]) == ["x.lr"]
    assert compare.varying_keys([a, {**a, "extra": 1}]) == ["extra"]  # a key only one run has differs


@given(st.lists(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4).map(".".join), min_size=1,
                max_size=6, unique=True))
def test_short_names_are_unique_tails(keys: list[str]) -> None:
    names = compare.short_names(keys)
    for key, name in names.items():
        assert key == name or key.endswith("." + name)
        # the shortest tail no other key ends with; the whole key when it is itself the tail of another ("a", "b.a")
        clash = any(o != key and (o == name or o.endswith("." + name)) for o in keys)
        assert not clash or name == key
    assert len(set(names.values())) == len(keys)  # a label never names two keys alike


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False) | st.none(), max_size=8))
def test_spread_is_the_sample_mean_and_std_of_the_values_present(values: list[float | None]) -> None:
    got = compare.Spread.of(values)
    present = [v for v in values if v is not None]
    assert got.n == len(present)
    if not present:
        assert got.mean is None and got.std is None
        return
    assert got.mean == pytest.approx(statistics.fmean(present), abs=1e-6)
    if len(present) == 1:
        assert got.std is None
    else:
        assert got.std == pytest.approx(statistics.stdev(present), rel=1e-6, abs=1e-6)


def test_runs_differing_only_in_the_seed_form_one_group(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    ids = [f"lr-grid-lr{lr:g}-s{s}" for lr in GRID for s in GRID[lr]]
    data = _grouped(tmp_path, ids)
    assert data["varying"] == [LR]
    assert [g["label"] for g in data["groups"]] == ["lr=0.1", "lr=0.01"]
    fast, slow = data["groups"]
    assert fast["n"] == slow["n"] == 2 and fast["seeds"] == [1, 2]
    assert fast["final_accuracy"]["mean"] == pytest.approx(0.85)
    assert fast["final_accuracy"]["std"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert slow["final_accuracy"]["mean"] == pytest.approx(0.65)
    # target 0.7 from the configs: lr 0.1 at rounds 2 and 3; lr 0.01 at round 3 with seed 1, never with seed 2
    assert fast["rounds_to_target"] == {"mean": 2.5, "std": pytest.approx(statistics.stdev([2, 3])), "n": 2}
    assert (slow["reached"], slow["not_reached"]) == (1, 1)
    assert slow["rounds_to_target"] == {"mean": 3.0, "std": None, "n": 1}
    assert fast["wall_s"]["mean"] == pytest.approx(7.0) and slow["wall_s"]["mean"] == pytest.approx(10.0)
    # every run: 6 activations of 1 GB-s on AWS, priced by the list price
    price = PRICES["aws"]
    assert fast["cost_usd"]["mean"] == pytest.approx(sum(price.cost(6.0, 6)))
    assert fast["cost_usd"]["std"] == pytest.approx(0.0)


def test_target_option_and_the_mean_curve(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    ids = ["lr-grid-lr0.1-s1", "lr-grid-lr0.1-s2"]
    data = _grouped(tmp_path, ids, target=0.85)
    (group,) = data["groups"]
    assert data["varying"] == [] and group["label"] == "all runs"
    assert (group["reached"], group["not_reached"], group["rounds_to_target"]["mean"]) == (1, 1, 3.0)
    curve = group["curve"]
    assert [p["round"] for p in curve] == [1, 2, 3]
    assert [p["accuracy"] for p in curve] == pytest.approx([0.45, 0.65, 0.85])
    assert curve[0]["accuracy_std"] == pytest.approx(statistics.stdev([0.5, 0.4]))
    assert [p["elapsed_s"] for p in curve] == pytest.approx([2.0, 4.0, 6.0])
    per_round = sum(PRICES["aws"].cost(2.0, 2))
    assert [p["cost_usd"] for p in curve] == pytest.approx([per_round, 2 * per_round, 3 * per_round])


def test_sweep_report_text(tmp_path: Path, run_cli: Any) -> None:
    write_sweep(tmp_path, skip=("lr-grid-lr0.01-s2",))
    code, out, err = run_cli("report", "--sweep", "lr-grid", "--logs-dir", str(tmp_path))
    assert code == 0, err
    assert "sweep lr-grid: 3 runs, 2 groups" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("lr=")}
    assert rows["lr=0.1"].split()[1:5] == ["2", "0.8500", "±", "0.0707"]
    assert rows["lr=0.01"].split()[1:3] == ["1", "0.7000"]  # one run: no ± part
    assert "groups differ in: " + LR in out
    assert "lr-grid-lr0.01-s2 (completed)" in out  # the manifest's run without a folder is said


def test_sweep_report_csv_and_json(tmp_path: Path, run_cli: Any) -> None:
    write_sweep(tmp_path)
    code, out, _ = run_cli("report", "--sweep", "lr-grid", "--csv", "--logs-dir", str(tmp_path))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["label"] for r in rows] == ["lr=0.1", "lr=0.01"]
    assert [float(r[LR]) for r in rows] == [0.1, 0.01]
    assert float(rows[0]["final_accuracy_mean"]) == pytest.approx(0.85)
    assert (rows[1]["reached"], rows[1]["not_reached"], rows[1]["rounds_to_target_std"]) == ("1", "1", "")
    code, out, _ = run_cli("report", "--sweep", "lr-grid", "--json", "--logs-dir", str(tmp_path))
    doc = json.loads(out)
    assert doc["sweep"] == "lr-grid" and doc["varying"] == [LR] and len(doc["runs"]) == 4
    assert [r["label"] for r in doc["runs"]] == ["lr=0.1", "lr=0.1", "lr=0.01", "lr=0.01"]
    assert doc["groups"][0]["runs"] == ["lr-grid-lr0.1-s1", "lr-grid-lr0.1-s2"]


def test_several_runs_end_with_the_group_table(tmp_path: Path, run_cli: Any) -> None:
    write_sweep(tmp_path)
    code, out, _ = run_cli("report", "lr-grid-lr0.1-s1", "lr-grid-lr0.01-s1", "lr-grid-lr0.1-s2",
                           "--target", "0.75", "--logs-dir", str(tmp_path))
    assert code == 0
    tail = out[out.index("groups (mean ± sample std over seeds)"):]
    assert "rounds to target: to accuracy 0.7500 (--target)" in tail
    fast = next(line for line in tail.splitlines() if line.startswith("lr=0.1"))
    assert fast.split()[1] == "2" and "3.0 ± 0.0" in fast
    code, out, _ = run_cli("report", "lr-grid-lr0.1-s1", "lr-grid-lr0.1-s2", "--groups", "--json",
                           "--logs-dir", str(tmp_path))
    assert json.loads(out)["groups"][0]["n"] == 2


def test_overrides_line_in_a_single_run_report(tmp_path: Path, run_cli: Any) -> None:
    write_run(tmp_path, "tuned", lr=0.05, seed=3, accuracies=[0.5, 0.6],
              overrides={"scenarios.federated_learning.model_params.lr": 0.05, "scenarios.federated_learning.seed": 3})
    code, out, _ = run_cli("report", "tuned", "--logs-dir", str(tmp_path))
    assert code == 0
    assert "overrides: scenarios.federated_learning.model_params.lr=0.05, scenarios.federated_learning.seed=3" in out
    write_run(tmp_path, "plain", lr=0.05, seed=3, accuracies=[0.5, 0.6])
    code, out, _ = run_cli("report", "plain", "--logs-dir", str(tmp_path))
    assert "overrides" not in out


@pytest.mark.parametrize("args, message", [
    (("--sweep", "nope"), "no sweep 'nope'"),
    (("--sweep", "lr-grid", "lr-grid-lr0.1-s1"), "either --sweep NAME or run ids"),
    (("--target", "1.5"), "1.5"),
])
def test_usage_errors(tmp_path: Path, run_cli: Any, args: tuple[str, ...], message: str) -> None:
    write_sweep(tmp_path)
    code, _, err = run_cli("report", *args, "--logs-dir", str(tmp_path))
    assert code == 2 and message in err


def test_a_broken_manifest_is_a_results_failure(tmp_path: Path, run_cli: Any) -> None:
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "bad.json").write_text('{"runs": [{"seed": 1}]}')
    code, _, err = run_cli("report", "--sweep", "bad", "--logs-dir", str(tmp_path))
    assert code == 1 and "not a sweep manifest" in err


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_group_plot_draws_a_line_and_a_band_per_group(tmp_path: Path, run_cli: Any, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    write_sweep(tmp_path)
    target = tmp_path / f"sweep{suffix}"
    code, _, err = run_cli("report", "--sweep", "lr-grid", "--plot", str(target), "-q", "--logs-dir", str(tmp_path))
    assert code == 0, err
    if suffix == ".svg":
        text = target.read_text()
        assert "lr=0.1 (n=2)" in text and "lr=0.01 (n=2)" in text  # the legend names the groups
        assert "accuracy against cost" in text and "accuracy against wall time" in text
        return
    from test_report_cli import colour_share, png_pixels

    pixels = png_pixels(target)
    assert colour_share(pixels, "#1f77b4") > 0.001 and colour_share(pixels, "#ff7f0e") > 0.001  # C0, C1 lines
