"""`fedkeeper logs`: formatting, filters, JSON lines and --follow (driven by a fake sleep, no timing)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from rich.text import Text

from fedkeeper.results.logs_view import EventFilter, follow_events, format_event


def plain(markup: str) -> str:
    return Text.from_markup(markup).plain


def events_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_activation_line_reads_like_the_issue_says() -> None:
    ts = dt.datetime(2024, 5, 1, 12, 3, 4, 123000).timestamp()
    line = plain(format_event({"ts": ts, "run_id": "r", "event": "activation", "round": 3, "client_id": 7,
                               "cluster": "laptop", "state": "succeeded", "duration_s": 0.41, "cold": True,
                               "attempt": 1}))
    assert line == "12:03:04.123 r3 c07 laptop activation succeeded 0.41s (cold)"


def test_failed_retry_and_server_activations_and_brackets_in_errors() -> None:
    ts = dt.datetime(2024, 5, 1, 9, 0, 0).timestamp()
    line = plain(format_event({"ts": ts, "event": "activation", "round": 2, "client_id": 3, "cluster": "ow",
                               "state": "failed", "duration_s": 1.5, "cold": False, "attempt": 2,
                               "error": "KeyError: [bold] not found"}))
    assert line == "09:00:00.000 r2 c03 ow activation failed 1.50s attempt 2 KeyError: [bold] not found"
    server = plain(format_event({"ts": ts, "event": "activation", "round": 0, "client_id": "server",
                                 "cluster": "laptop", "state": "succeeded", "duration_s": 0.04}))
    assert " r0 server laptop activation succeeded" in server


def test_round_and_run_lines() -> None:
    finished = plain(format_event({"ts": 0, "event": "round_finished", "round": 4, "accuracy": 0.91234,
                                   "loss": 0.3, "selected": 10, "succeeded": 9, "failed": 1, "timed_out": 0,
                                   "lost": 0, "round_s": 3.21}))
    assert finished.endswith("r4 round finished accuracy 0.9123 loss 0.3000 ok 9/10 1 failed 3.21s")
    done = plain(format_event({"ts": 0, "event": "run_finished", "status": "completed", "rounds_completed": 5,
                               "rounds_planned": 5, "final": {"accuracy": 0.9, "loss": 0.4}, "wall_s": 61.0}))
    assert done.endswith("run finished completed 5/5 rounds accuracy 0.9000 loss 0.4000 wall 61.0s")
    other = plain(format_event({"ts": 0, "event": "throttled", "round": 2, "cluster": "gcf", "retry_after_s": 2}))
    assert other.endswith("r2 throttled cluster=gcf retry_after_s=2")


def test_filters() -> None:
    act = {"event": "activation", "round": 2, "client_id": 7, "state": "failed"}
    assert EventFilter(round=2, client_id="7", state="failed")(act)
    assert not EventFilter(round=3)(act)
    assert not EventFilter(client_id="8")(act)
    assert not EventFilter(state="succeeded")(act)
    assert not EventFilter(client_id="7")({"event": "round_finished", "round": 2})
    assert EventFilter(client_id="server")({"event": "activation", "client_id": "server"})
    assert EventFilter(event="round_finished")({"event": "round_finished", "round": 1})


def test_cli_json_lines_are_the_matching_events(tmp_path: Path, make_run_folder,
                                                run_cli: Any) -> None:
    run = make_run_folder(tmp_path, "r1", rounds=3)
    code, out, _ = run_cli("logs", "r1", "--state", "failed", "--json", "--logs-dir", str(tmp_path))
    assert code == 0
    got = [json.loads(line) for line in out.splitlines()]
    expected = [e for e in events_of(run["dir"] / "events.jsonl") if e.get("state") == "failed"]
    assert got == expected and len(got) == 3  # client 1 fails once per round

    code, out, _ = run_cli("logs", "r1", "--round", "2", "--client", "2", "--json", "--logs-dir", str(tmp_path))
    got = [json.loads(line) for line in out.splitlines()]
    assert [(e["event"], e["state"]) for e in got] == [("activation", "timed_out")]


def test_cli_stream_of_latest_run(tmp_path: Path, make_run_folder, run_cli: Any) -> None:
    run = make_run_folder(tmp_path, "r1", rounds=2)
    code, out, _ = run_cli("logs", "--logs-dir", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(events_of(run["dir"] / "events.jsonl"))
    assert "run started" in lines[0] and "run finished" in lines[-1]
    assert any(" r2 c02 laptop activation timed_out" in line for line in lines)


def test_cli_unknown_run_exits_2(tmp_path: Path, run_cli: Any) -> None:
    code, _, err = run_cli("logs", "nope", "--logs-dir", str(tmp_path))
    assert code == 2 and "no run 'nope'" in err


def test_cli_follow_of_a_finished_run_ends_by_itself(tmp_path: Path, make_run_folder,
                                                     run_cli: Any) -> None:
    run = make_run_folder(tmp_path, "r1", rounds=1)
    code, out, _ = run_cli("logs", "r1", "-f", "--json", "--logs-dir", str(tmp_path))
    assert code == 0
    assert len(out.splitlines()) == len(events_of(run["dir"] / "events.jsonl"))


class Writer:
    """A fake `sleep` that appends the next chunk of a live events.jsonl each time the follower waits."""

    def __init__(self, path: Path, chunks: list[str]) -> None:
        self.path, self.chunks, self.waits = path, list(chunks), 0

    def __call__(self, seconds: float) -> None:
        self.waits += 1
        if not self.chunks:
            raise AssertionError("the follower kept waiting after the run had ended")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(self.chunks.pop(0))


def _line(event: str, **fields: object) -> str:
    return json.dumps({"ts": 1.0, "run_id": "r", "event": event, **fields}) + "\n"


def test_follow_waits_for_the_file_holds_partial_lines_and_stops_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    activation = _line("activation", round=1, client_id=0, state="succeeded")
    writer = Writer(path, [
        "",  # the run creates the file
        _line("run_started") + activation[:20],  # a line half written...
        activation[20:] + _line("round_finished", round=1),  # ...and completed
        "",  # nothing new for a while
        _line("run_finished", status="completed"),
    ])
    got = list(follow_events(path, poll_s=0.01, sleep=writer))
    assert [e["event"] for e in got] == ["run_started", "activation", "round_finished", "run_finished"]
    assert got[1]["client_id"] == 0
    assert not writer.chunks  # it read everything and stopped without another wait


def test_follow_goes_on_after_an_interruption_that_was_resumed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_line("run_started") + _line("run_interrupted") + _line("run_resumed"))
    writer = Writer(path, [_line("round_finished", round=2), _line("run_finished")])
    got = list(follow_events(path, poll_s=0.01, sleep=writer))
    assert [e["event"] for e in got][-2:] == ["round_finished", "run_finished"]


def test_follow_stops_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(_line("run_started"))
    calls = iter([False, True])
    got = list(follow_events(path, poll_s=0.01, sleep=lambda s: None, should_stop=lambda: next(calls)))
    assert [e["event"] for e in got] == ["run_started"]
