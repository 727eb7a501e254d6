"""`fedkeeper report --plot FILE.{png,pdf,svg}`: accuracy, loss and round time per round, one line per run.

The file's extension chooses the format (matplotlib's savefig format); any other extension is a usage error
(exit 2), raised before any run is read.

Several runs are overlaid in the same three panels, because comparing optimizers, client counts or
platforms is what the plot is for. matplotlib is an optional extra (`pip install 'fedkeeper[plot]'`); it is
driven through its object API and the Agg canvas, so no global pyplot state or display is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedkeeper.errors import UsageProblem
from fedkeeper.results.report import run_label

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: file extension → matplotlib savefig format
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
INSTALL_HINT = "install fedkeeper[plot] (pip install 'fedkeeper[plot]') or matplotlib to write plots"


class PlotUnavailable(UsageProblem, RuntimeError):
    """matplotlib is not installed."""

    def __init__(self) -> None:
        super().__init__(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}")


class UnsupportedPlotFormat(UsageProblem, ValueError):
    """`--plot` names a file whose extension is not one of FORMATS."""

    def __init__(self, path: Path) -> None:
        what = f"unsupported extension {path.suffix!r}" if path.suffix else "no file extension"
        super().__init__(f"--plot {path}: {what}; use one of {', '.join(FORMATS)}")


def plot_format(path: Path | str) -> str:
    """The savefig format the file's extension asks for (case-insensitive); UnsupportedPlotFormat otherwise."""
    path = Path(path)
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise UnsupportedPlotFormat(path) from None


def _series(rounds: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """Values of one rounds.csv column, NaN where missing (matplotlib breaks the line there)."""
    return [math.nan if r.get(key) is None else float(r[key]) for r in rounds]


def plot_runs(reports: Sequence[Mapping[str, Any]], path: Path | str, *, dpi: int = 110) -> Path:
    """Write the plot of one or several runs in the format of the path's extension; returns its path."""
    fmt = plot_format(path)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise PlotUnavailable() from None

    path = Path(path)
    fig = Figure(figsize=(16, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_loss, ax_time = fig.subplots(1, 3)
    single = len(reports) == 1

    for i, report in enumerate(reports):
        # colour and marker both differ per run, so runs stay apart in greyscale and where lines coincide
        style = {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "ms": 5}
        rounds = report["rounds"]
        x = [r["round"] for r in rounds]
        label = run_label(report)
        ax_acc.plot(x, _series(rounds, "accuracy"), label=label, **style)
        ax_loss.plot(x, _series(rounds, "loss"), label=label, **style)
        if single:
            _stacked_round_time(ax_time, rounds)
        else:
            ax_time.plot(x, _series(rounds, "round_s"), label=label, **style)
            ax_time.plot(x, _series(rounds, "aggregate_s"), ls="--", lw=1, color=style["color"])

    ax_acc.set(title="test accuracy of the global model", xlabel="round", ylabel="accuracy")
    ax_loss.set(title="test loss of the global model", xlabel="round", ylabel="loss")
    ax_time.set(title="round time" + ("" if single else " (solid) and its aggregation part (dashed)"),
                xlabel="round", ylabel="seconds")
    for ax in (ax_acc, ax_loss, ax_time):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_time.set_ylim(bottom=0)
    if single:
        ax_time.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize="small")
        fig.suptitle(run_label(reports[0]))
    else:
        handles, labels = ax_acc.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize="small")
        fig.suptitle(f"{len(reports)} runs compared")
    path.parent.mkdir(parents=True, exist_ok=True)
    # no creation date in PDF/SVG metadata: the same runs give the same bytes
    metadata = {"CreationDate": None} if fmt == "pdf" else {"Date": None} if fmt == "svg" else None
    fig.savefig(path, dpi=dpi, format=fmt, metadata=metadata)
    return path


def _stacked_round_time(ax: Any, rounds: Sequence[Mapping[str, Any]]) -> None:
    """One run: each round's time stacked as the client phase (invoke until every update is stored or given
    up: `invoke_s`), aggregation, and the rest (selection, bookkeeping); the slowest client's own duration is
    marked inside the client phase, so the platform overhead shows as the gap above it."""
    x = [r["round"] for r in rounds]
    clients = [0.0 if math.isnan(v) else v for v in _series(rounds, "invoke_s")]
    aggregate = [0.0 if math.isnan(v) else v for v in _series(rounds, "aggregate_s")]
    total = _series(rounds, "round_s")
    rest = [0.0 if math.isnan(t) else max(0.0, t - c - a) for t, c, a in zip(total, clients, aggregate)]
    ax.bar(x, clients, color="C0", label="invoke + wait for clients")
    ax.bar(x, aggregate, bottom=clients, color="C2", label="aggregate")
    ax.bar(x, rest, bottom=[c + a for c, a in zip(clients, aggregate)], color="C7", label="other")
    ax.plot(x, _series(rounds, "slowest_client_s"), color="k", marker="_", ms=18, mew=2, ls="none",
            label="slowest client")


def _load_matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable() from None
    return FigureCanvasAgg, Figure


def _save(fig: Any, path: Path, fmt: str, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"CreationDate": None} if fmt == "pdf" else {"Date": None} if fmt == "svg" else None
    fig.savefig(path, dpi=dpi, format=fmt, metadata=metadata)
    return path


#: the panels of the group plot: (x key of a curve point, x label, title)
GROUP_PANELS = (("round", "round", "accuracy per round"),
                ("elapsed_s", "cumulative round time (s)", "accuracy against wall time"),
                ("cost_usd", "cumulative estimated cost (USD)", "accuracy against cost"))


def plot_groups(data: Mapping[str, Any], path: Path | str, *, dpi: int = 110) -> Path:
    """Accuracy against round, wall time and cost, one line per group (`compare.compare`): the mean over its
    runs, with a ± one sample std band where the group has more than one run; the group label is the legend."""
    fmt = plot_format(path)
    FigureCanvasAgg, Figure = _load_matplotlib()
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig = Figure(figsize=(16, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharey=True)
    for i, group in enumerate(data["groups"]):
        style = {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "ms": 4}
        curve = group["curve"]
        acc = _series(curve, "accuracy")
        band = [math.nan if p.get("accuracy_std") is None else float(p["accuracy_std"]) for p in curve]
        label = f"{group['label']} (n={group['n']})"
        for ax, (key, _, _) in zip(axes, GROUP_PANELS):
            x = _series(curve, key)
            ax.plot(x, acc, label=label, **style)
            if group["n"] > 1:
                ax.fill_between(x, [a - b for a, b in zip(acc, band)], [a + b for a, b in zip(acc, band)],
                                color=style["color"], alpha=0.18, lw=0)
    for ax, (key, xlabel, title) in zip(axes, GROUP_PANELS):
        ax.set(title=title, xlabel=xlabel)
        ax.grid(True, alpha=0.3)
        if key == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("test accuracy of the global model")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize="small")
    what = f"sweep {data['sweep']}" if data.get("sweep") else f"{len(data['runs'])} runs"
    fig.suptitle(f"{what}: {len(data['groups'])} groups, mean ± sample std over seeds")
    return _save(fig, path, fmt, dpi)
