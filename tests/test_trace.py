"""Profiler traces (`--set trace=true`): real torchrun, 2 gloo ranks, simple_cnn, a few steps.

A traced DDP run writes one Chrome-trace file a rank, named in result.json, holding backward's
autograd events and the collectives gloo ran; a run without the option writes none. The
overlapped share (labkit.report.traces) is checked on a hand-made event list whose answer is
known, then on the run's own events."""

import json

import pytest

from conftest import run_to
from labkit.report import traces

COMMON = ("model=simple_cnn", "workers=0", "timing_warmup_steps=1", "timeline_steps=2")


def event(name, start, dur, tid=1, cat="cpu_op"):
    return {"ph": "X", "name": name, "ts": start, "dur": dur, "tid": tid, "cat": cat}


def test_overlapped_share_of_a_known_event_list():
    # one step (0–200 µs): data until 10, forward to 40, backward 40–100 (two autograd functions
    # with a gap), then two collectives on gloo's threads that overlap each other: 80–150 and 140–160
    events = [event("ProfilerStep#3", 0, 200), event("enumerate(DataLoader)#_Iter.__next__", 0, 10),
              event(traces.BACKWARD + "ConvolutionBackward0", 40, 20),
              event(traces.BACKWARD + "AddmmBackward0", 70, 30),
              event("gloo:all_reduce", 80, 70, tid=7, cat="user_annotation"),
              event("gloo:all_reduce", 140, 20, tid=8, cat="user_annotation"),
              event("c10d::allreduce_", 75, 1)]  # the hand-over on the loop's thread is not the transfer
    lanes = traces.spans(events)
    assert lanes["backward"] == [(40, 100)] and lanes["forward"] == [(10, 40)]
    result = traces.overlap(events)
    # communication runs 80–160 (80 µs, the overlap of the two counted once); 80–100 of it is inside backward
    assert result["communication_s"] == pytest.approx(80e-6) and result["overlapped_s"] == pytest.approx(20e-6)
    assert result["overlapped_share"] == pytest.approx(0.25) and result["collectives"] == 2


def test_no_collective_has_no_share():
    events = [event("ProfilerStep#0", 0, 10), event(traces.BACKWARD + "X", 1, 5)]
    assert traces.overlap(events)["overlapped_share"] is None


def test_traced_ddp_run_names_and_holds_its_traces(tmp_path):
    result, _ = run_to(tmp_path / "traced", "ddp", 2, *COMMON, "trace=true", max_steps=4)
    entry = result["trace"]
    assert entry["files"] == ["trace/rank-0.json", "trace/rank-1.json"] and entry["steps"] == [2, 3]
    for path in traces.trace_files(tmp_path / "traced"):
        json.loads(path.read_text())  # plain JSON, what Perfetto and chrome://tracing open
        events = traces.load_events(path)
        names = {e["name"] for e in events}
        assert any(name.startswith(traces.BACKWARD) for name in names), "no backward in the trace"
        assert "gloo:all_reduce" in names and "c10d::allreduce_" in names, "no collective in the trace"
        assert sum(name.startswith("ProfilerStep#") for name in names) == 2  # the two traced steps
        share = traces.overlap(events)
        assert share["steps"] == 2 and share["collectives"] >= 2 and 0 <= share["overlapped_share"] <= 1


def test_run_without_trace_writes_none(tmp_path):
    result, _ = run_to(tmp_path / "plain", "ddp", 2, *COMMON, max_steps=2)
    assert result["trace"] is None and not (tmp_path / "plain" / "trace").exists()
    with pytest.raises(FileNotFoundError, match="trace=true"):
        traces.trace_files(tmp_path / "plain")
