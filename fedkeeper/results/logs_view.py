"""`fedkeeper logs`: a run's events.jsonl as a readable, filterable, coloured stream (or JSON lines).

`--follow` tails a live run the way `tail -f` does — polling the file, holding back a half-written last
line — and stops once the run has finished, failed, been interrupted or stopped and nothing more is being written (a
resumed run writes `run_resumed` after a `run_interrupted`, so a terminal event mid-file is not the end).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from fedkeeper.activations import ActivationState
from fedkeeper.errors import UsageProblem
from fedkeeper.results.run_folders import END_STATUS, LIFECYCLE_EVENTS, read_events

TERMINAL_EVENTS = tuple(END_STATUS)
#: every event type a run writes to events.jsonl (tests/test_cli_options.py checks the writers against it)
KNOWN_EVENTS = tuple(dict.fromkeys((*LIFECYCLE_EVENTS, "model_initialised", "round_started", "activation",
                                    "round_finished", "update_rejected", "update_ignored", "target_reached",
                                    "throttled", "redeploy", "round_rows_dropped", "updates_aggregated",
                                    "privacy_budget_reached", "platform_profile", "prewarm", "tree_aggregation")))
_A = ActivationState
STATE_STYLE = {_A.SUCCEEDED: "green", _A.FAILED: "red", _A.TIMED_OUT: "yellow", _A.LOST: "magenta",
               _A.INVOKED: "cyan", _A.THROTTLED: "yellow", _A.ABANDONED: "bright_black", "pending": "cyan"}
_ENVELOPE = ("ts", "run_id", "event")


@dataclass(frozen=True)
class EventFilter:
    """Which events to show; None means any. An event lacking a filtered field does not match."""

    round: int | None = None
    client_id: str | None = None
    state: str | None = None
    event: str | None = None

    def __call__(self, event: Mapping[str, Any]) -> bool:
        if self.event is not None and event.get("event") != self.event:
            return False
        if self.round is not None and event.get("round") != self.round:
            return False
        if self.client_id is not None and (event.get("client_id") is None
                                           or str(event["client_id"]) != str(self.client_id)):
            return False
        if self.state is not None and event.get("state") != self.state:
            return False
        return True


class UnknownEvent(UsageProblem, ValueError):
    """`logs --event NAME` with a NAME no run writes: a typo would otherwise print nothing and succeed."""

    def __init__(self, name: str) -> None:
        super().__init__(f"--event: unknown event {name!r}; known events: {', '.join(sorted(KNOWN_EVENTS))}")


def check_event(name: str | None) -> str | None:
    """`name` if it is an event type runs write (or None); UnknownEvent (exit 2) otherwise."""
    if name is not None and name not in KNOWN_EVENTS:
        raise UnknownEvent(name)
    return name


def clock(ts: Any) -> str:
    """Local wall-clock time of an event, to the millisecond."""
    if not isinstance(ts, (int, float)):
        return "--:--:--.---"
    moment = dt.datetime.fromtimestamp(float(ts))
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _client(value: Any) -> str:
    """c07 for client 7; the aggregator's activations carry client_id "server"."""
    if value is None or value == "":
        return ""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return f"c{int(value):02d}"
    return escape(str(value))


def _extras(event: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    skipped = set(_ENVELOPE) | set(skip)
    parts = [f"{k}={escape(json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))}"
             for k, v in event.items() if k not in skipped and v not in (None, "", [], {})]
    return " ".join(parts)


def format_event(event: Mapping[str, Any]) -> str:
    """One event as a line with rich markup, e.g. `12:03:04.123 r3 c07 laptop activation succeeded 0.41s (cold)`."""
    kind = str(event.get("event") or "?")
    head = f"[dim]{clock(event.get('ts'))}[/]"
    rnd = f" [bold]r{event['round']}[/]" if event.get("round") is not None else ""
    if kind == "activation":
        state = str(event.get("state") or "?")
        who = _client(event.get("client_id")) or escape(str(event.get("function") or "function"))
        line = f"{head}{rnd} {who} {escape(str(event.get('cluster') or '?'))} activation " \
               f"[{STATE_STYLE.get(state, 'white')}]{escape(state)}[/]"
        if event.get("duration_s") is not None:
            line += f" {_num(event['duration_s'], '.2f')}s"
        if event.get("cold") is True:
            line += " [blue](cold)[/]"
        if (event.get("attempt") or 1) > 1:
            line += f" attempt {event['attempt']}"
        if event.get("injected"):
            line += f" [magenta]injected {escape(str(event['injected']))}[/]"
        if event.get("error"):
            line += f" [red]{escape(str(event['error']))}[/]"
        return line
    if kind == "round_finished":
        bad = sum(int(event.get(k) or 0) for k in ("failed", "timed_out", "lost"))
        return (f"{head}{rnd} [bold cyan]round finished[/] accuracy {_num(event.get('accuracy'), '.4f')} "
                f"loss {_num(event.get('loss'), '.4f')} ok {event.get('succeeded', '–')}/{event.get('selected', '–')}"
                + (f" [red]{bad} failed[/]" if bad else "")
                + (f" [yellow]{event['rejected']} rejected[/]" if event.get("rejected") else "")
                + f" {_num(event.get('round_s'), '.2f')}s")
    if kind in TERMINAL_EVENTS:
        style = {"run_finished": "bold green", "run_failed": "bold red"}.get(kind, "bold yellow")
        final = event.get("final") if isinstance(event.get("final"), dict) else {}
        line = (f"{head} [{style}]{kind.replace('_', ' ')}[/] {escape(str(event.get('status') or ''))} "
                f"{event.get('rounds_completed', '–')}/{event.get('rounds_planned', '–')} rounds "
                f"accuracy {_num(final.get('accuracy'), '.4f')} loss {_num(final.get('loss'), '.4f')} "
                f"wall {_num(event.get('wall_s'), '.1f')}s")
        if event.get("error"):
            line += f" [red]{escape(str(event['error']))}[/]"
        return line
    if kind in (*LIFECYCLE_EVENTS, "round_started", "model_initialised", "target_reached"):
        return f"{head}{rnd} [bold cyan]{kind.replace('_', ' ')}[/] {_extras(event, ('round',))}".rstrip()
    style = "red" if kind == "update_rejected" else \
        "yellow" if kind in ("redeploy", "throttled", "update_ignored") else "white"
    return f"{head}{rnd} [{style}]{escape(kind)}[/] {_extras(event, ('round',))}".rstrip()


def event_json(event: Mapping[str, Any]) -> str:
    """One event as a JSON line, as written in events.jsonl."""
    return json.dumps(event, default=str, separators=(",", ":"))


def follow_events(path: Path, *, poll_s: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                  should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """Events of a (possibly live) events.jsonl as they are written.

    Ends when the file's last lifecycle event is a terminal one (run_finished, run_failed, run_interrupted, run_stopped) and
    the end of the file is reached,
    or when `should_stop()` says so (Ctrl-C raises KeyboardInterrupt through `sleep`). Waits for the file to
    appear if the run has not written it yet.
    """
    while not path.exists():
        if should_stop():
            return
        sleep(poll_s)
    lifecycle: str | None = None
    pending = ""
    with open(path, encoding="utf-8") as handle:
        while True:
            chunk = handle.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    if event.get("event") in LIFECYCLE_EVENTS:
                        lifecycle = event["event"]
                    yield event
                continue
            if lifecycle in TERMINAL_EVENTS or should_stop():
                return
            sleep(poll_s)


def select_events(path: Path, keep: EventFilter, *, follow: bool = False, poll_s: float = 0.5,
                  should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """The events of a run that pass the filter, from the file as it is or followed live."""
    source = follow_events(path, poll_s=poll_s, should_stop=should_stop) if follow else read_events(path)
    return (event for event in source if keep(event))
