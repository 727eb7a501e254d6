"""`fedkeeper report` through the real entry point (exit codes, output formats, the PNG) on synthetic runs."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest


def png_pixels(path: Path):  # type: ignore[no-untyped-def]
    """The PNG as an RGB array (via matplotlib's reader), after checking the file signature."""
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(str(path))[..., :3]


def colour_share(pixels, hex_colour: str) -> float:  # type: ignore[no-untyped-def]
    """Share of pixels within a small distance of one colour (how much of a line is drawn)."""
    import numpy as np

    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return float((np.abs(pixels - rgb).max(axis=-1) < 0.06).mean())


@pytest.fixture
def two_runs(tmp_path: Path, make_run_folder) -> Path:
    logs = tmp_path / "Logs"
    make_run_folder(logs, "run-adam", optim="adam", rounds=4)
    make_run_folder(logs, "run-sgd", optim="sgd", rounds=4, t0=1_700_000_900.0)
    return logs


def test_json_of_one_run_matches_its_rounds_csv(two_runs: Path, run_cli: Any) -> None:
    code, out, _ = run_cli("report", "run-adam", "--json", "--logs-dir", str(two_runs))
    assert code == 0
    doc = json.loads(out)
    with open(two_runs / "run-adam" / "rounds.csv", newline="") as handle:
        raw = list(csv.DictReader(handle))
    assert [r["accuracy"] for r in doc["rounds"]] == [pytest.approx(float(r["accuracy"])) for r in raw]
    assert doc["summary"]["status"] == doc["status"] == "completed"
    assert doc["optimizer"] == "adam"


def test_two_optimizers_side_by_side(two_runs: Path, run_cli: Any) -> None:
    code, out, _ = run_cli("report", "run-adam", "run-sgd", "--logs-dir", str(two_runs))
    assert code == 0
    side = out[out.index("runs side by side"):]
    header = next(line for line in side.splitlines() if "run-adam (adam)" in line)
    assert "run-sgd (sgd)" in header  # both runs are columns of the same table
    optimizer_row = next(line for line in side.splitlines() if line.startswith("optimizer"))
    assert optimizer_row.split()[1:] == ["adam", "sgd"]
    assert "accuracy / loss per round" in side


def test_json_of_several_runs_is_a_list_in_the_order_given(two_runs: Path,
                                                           run_cli: Any) -> None:
    code, out, _ = run_cli("report", "run-sgd", "run-adam", "--json", "--logs-dir", str(two_runs))
    assert code == 0
    assert [d["run_id"] for d in json.loads(out)] == ["run-sgd", "run-adam"]


def test_csv_output(two_runs: Path, run_cli: Any) -> None:
    code, out, _ = run_cli("report", "run-adam", "run-sgd", "--csv", "--logs-dir", str(two_runs))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["run_id"] for r in rows] == ["run-adam"] * 4 + ["run-sgd"] * 4


def test_latest_is_the_default(two_runs: Path, run_cli: Any) -> None:
    import os

    os.utime(two_runs / "run-adam" / "summary.json", (2_000_000_000, 2_000_000_000))
    code, out, _ = run_cli("report", "--json", "--logs-dir", str(two_runs))
    assert code == 0 and json.loads(out)["run_id"] == "run-adam"


def test_usage_errors_exit_2(two_runs: Path, run_cli: Any) -> None:
    code, _, err = run_cli("report", "nope", "--logs-dir", str(two_runs))
    assert code == 2 and "no run 'nope'" in err and "run-adam" in err
    code, _, err = run_cli("report", "run-adam", "--json", "--csv", "--logs-dir", str(two_runs))
    assert code == 2 and "exclusive" in err


def test_pricing_overrides_from_the_config(tmp_path: Path, make_run_folder,
                                           run_cli: Any) -> None:
    make_run_folder(tmp_path / "Logs", "r1", clusters={"laptop": "local"})
    config = tmp_path / "c.yaml"
    config.write_text("experiment: synth\nproviders: {local: {laptop: {}}}\nscenarios: {smoke: {}}\n"
                      "pricing: {local: {gb_second: 0.5, per_million_invocations: 0}}\n")
    code, out, err = run_cli("report", "r1", "-c", str(config), "--json", "--logs-dir", str(tmp_path / "Logs"))
    assert code == 0, err
    cost = json.loads(out)["cost"]
    assert cost["platforms"][0]["gb_second_usd"] == 0.5
    assert cost["total_usd"] == pytest.approx(cost["platforms"][0]["gb_seconds"] * 0.5)


def test_plot_of_two_runs_overlays_both(two_runs: Path, tmp_path: Path, run_cli: Any) -> None:
    png = tmp_path / "plots" / "compare.png"
    code, _, err = run_cli("report", "run-adam", "run-sgd", "--plot", str(png), "--logs-dir", str(two_runs))
    assert code == 0, err
    pixels = png_pixels(png)
    height, width = pixels.shape[:2]
    assert width > 2 * height > 600  # three panels side by side
    assert pixels.std() > 0.05  # not a blank canvas
    # one colour per run (matplotlib's C0 blue and C1 orange), each drawn in every panel
    for colour in ("#1f77b4", "#ff7f0e"):
        for panel in range(3):
            part = pixels[:, panel * width // 3:(panel + 1) * width // 3]
            assert colour_share(part, colour) > 0.001, (colour, panel)


def test_plot_of_one_run_stacks_the_round_time(two_runs: Path, tmp_path: Path,
                                               run_cli: Any) -> None:
    png = tmp_path / "one.png"
    code, _, err = run_cli("report", "run-adam", "--plot", str(png), "--logs-dir", str(two_runs))
    assert code == 0, err
    pixels = png_pixels(png)
    time_panel = pixels[:, 2 * pixels.shape[1] // 3:]
    assert colour_share(time_panel, "#1f77b4") > 0.02  # the client phase bars
    assert colour_share(time_panel, "#2ca02c") > 0.005  # the aggregation part on top


def test_plot_without_matplotlib_says_what_to_install(two_runs: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      run_cli: Any) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "x.png"
    code, _, err = run_cli("report", "run-adam", "--plot", str(png), "--logs-dir", str(two_runs))
    assert code == 2
    assert "fedkeeper[plot]" in err
    assert not png.exists()
