"""A hang or a desync you can read (issue 30 item 2), under real torchrun, 2 gloo ranks: the
failure report names each rank's collective by number, operation and size, and the rank whose
sequence differs (labkit.training.collective_log writes the record, labkit.jobs.failures reads
it); the run ends, and nothing is left running."""

import json
import time

from conftest import labkit_cli, processes_of, stragglers_killed
from labkit.training.collective_log import read_collectives

FAST = ("--profile", "cpu", "--nproc", 2, "--max-steps", 6, "--set", "model=simple_cnn", "--set", "workers=0",
        "--set", "augment=false", "--set", "batch_size=16", "--set", "calibration_steps=0")


def run(out, *args):
    started = time.time()
    proc = labkit_cli("run", *FAST, "--out", out, *args, check=False, timeout=120)
    return proc, json.loads((out / "result.json").read_text()), time.time() - started


def collectives_before(out, rank: int, step: int) -> int:
    """How many collectives this rank issued in the steps before `step` (from its own record)."""
    return sum(e["step"] < step for e in read_collectives(out / "logs" / f"collectives-{rank}.jsonl")["collectives"])


def test_a_skipped_all_reduce_names_both_ranks_and_the_odd_one(tmp_path):
    out = tmp_path / "run"
    # rank 1 skips step 3's first all-reduce (simple_cnn's conv weight): its next one is the conv bias
    proc, result, elapsed = run(out, "--strategy", "allreduce", "--set", "fault=1:3:skip")
    assert proc.returncode == 1 and result["status"] == "failed", (proc.returncode, proc.stderr[-2000:])
    story = result["failure"]["collectives"]
    seq = collectives_before(out, 0, 3) + 1  # both ranks are in the same-numbered collective...
    ranks = story["by_rank"]
    assert ranks["0"]["in"]["seq"] == ranks["1"]["in"]["seq"] == seq
    assert (ranks["0"]["in"]["op"], ranks["0"]["in"]["bytes"]) == ("all_reduce", 3456)  # ...of different sizes
    assert (ranks["1"]["in"]["op"], ranks["1"]["in"]["bytes"]) == ("all_reduce", 128)
    assert ranks["0"]["last_finished"]["seq"] == ranks["1"]["last_finished"]["seq"] == seq - 1
    assert story["odd_rank"] == 1
    for words in (f"rank 0 in all_reduce of 3456 B #{seq}", f"rank 1 in all_reduce of 128 B #{seq}",
                  "rank 1's sequence differs from step 3"):
        assert words in story["summary"] and words in proc.stderr  # the one failure summary says it
    assert elapsed < 30, elapsed
    assert not processes_of(out) and not stragglers_killed(out)


def test_a_hanging_rank_is_stopped_and_each_rank_s_collective_named(tmp_path):
    out = tmp_path / "run"
    # rank 1 stops before step 3's collectives; rank 0 waits in DDP's all-reduce of step 3
    proc, result, elapsed = run(out, "--strategy", "ddp", "--set", "fault=1:3:hang", "--set", "watchdog_s=5")
    assert proc.returncode == 1 and result["status"] == "hung", (proc.returncode, proc.stderr[-2000:])
    story = result["failure"]["collectives"]
    seq = collectives_before(out, 0, 3) + 1
    ranks = story["by_rank"]
    assert ranks["0"]["in"]["seq"] == seq and ranks["0"]["in"]["op"] == "all_reduce"
    assert ranks["0"]["in"]["bytes"] == 80168  # simple_cnn's gradients in one bucket, float32
    assert ranks["1"]["in"] is None  # it never entered one
    assert ranks["0"]["last_finished"]["seq"] == ranks["1"]["last_finished"]["seq"] == seq - 1
    assert ranks["0"]["last_finished"].get("done")  # finished as the backend said, not guessed
    assert story["odd_rank"] == 1
    for words in (f"rank 0 in all_reduce of 80168 B #{seq}", f"rank 1 in no collective",
                  f"last finished #{seq - 1}", f"rank 1's sequence is behind: it never entered all_reduce of "
                                                f"80168 B #{seq}"):
        assert words in story["summary"] and words in proc.stderr
    assert elapsed < 30, elapsed  # start-up, the watchdog's 5 s, teardown
    assert not processes_of(out) and not stragglers_killed(out)


def test_the_report_says_why_a_failed_run_is_left_out():
    from labkit.report.selection import select_runs

    story = {"odd_rank": 1, "summary": "rank 0 in all_reduce of 3456 B #13 (step 3), last finished #12 …; rank 1 in "
                                       "all_reduce of 128 B #13 … — rank 1's sequence differs from step 3: …"}
    failed = {"name": "desync", "strategy": "allreduce", "status": "failed", "failure": {"collectives": story}}
    assert select_runs([failed]).lines() == ["left out desync (0 steps): status failed: rank 1's sequence differs "
                                             "from step 3: …"]
