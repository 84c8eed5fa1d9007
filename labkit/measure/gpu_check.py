"""`make gpu-check` (= `labkit machine --gpu`): the GPU path's short checks, one table.

On a machine with GPUs it runs, on the synthetic profile (ResNet-50, random batches drawn
on each GPU, NCCL):
- every method for a few steps on 1 rank and on one rank per GPU, each plain (fp32, NCHW)
  and with amp=bf16 + channels_last — a combination a method refuses, or a world size it
  cannot use, is a `skip` line with its one-line reason;
- the harness ratio: labkit's DDP against a plain DDP script on the same GPUs;
- a kill-and-resume: rank 0 killed at step 3, torchrun restarts, training resumes from
  the step-2 checkpoint and ends with every step recorded;
and prints a table (img/s and the figures docs/BENCHMARKS.md holds, pass/fail/skip per
line), also written to results/bench/gpu_check.{md,json}. Exit code 1 if a line failed.
Without a GPU it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from labkit.config import ConfigError, results_root
from labkit.strategies import BASELINE

H100_TARGET_IMG_S = 2800  # 1 GPU, ResNet-50, amp + channels_last (published PyTorch: ~2,600–2,800)
HARNESS_TARGET = 0.97  # labkit's DDP / plain DDP, as `labkit bench harness` states
VARIANTS = {"fp32": {}, "bf16+cl": {"amp": "bf16", "channels_last": True}}


@dataclass
class Line:
    """One row of the table: what ran, how it ended, its figures."""
    check: str
    ranks: int
    result: str = "skip"  # pass / FAIL / skip
    note: str = ""
    figures: dict = field(default_factory=dict)


def plan(strategies: list[str], gpus: int) -> list[tuple[str, str, int, dict]]:
    """(check name, strategy, ranks, overrides) of every method line: 1 rank and one per GPU."""
    worlds = sorted({1, gpus})
    return [(f"{s} {variant}", s, n, overrides) for n in worlds for s in strategies
            for variant, overrides in VARIANTS.items()]


def figures(result: dict) -> dict:
    """The figures docs/BENCHMARKS.md tabulates, from a result.json."""
    s = result["summary"]
    return {"img_s": s["throughput_img_s"], "step_ms": 1e3 * s["step_time_median_s"],
            "sync_pct": s["sync_share_pct"], "exposed_pct": s.get("exposed_comm_pct"),
            "mb_sent": s["bytes_sent_per_step"] / 1e6, "collectives": s["collectives_per_step"]}


def judge(result: dict) -> str:
    """'' if a run ended as it should (ok, every step recorded, finite losses), else why not."""
    if result.get("status") != "ok":
        return f"status {result.get('status')}"
    steps = result["steps"]
    expected = result["config"]["synthetic_steps"] * result["config"]["epochs"]
    if len(steps) != expected:
        return f"{len(steps)} of {expected} steps recorded"
    if any(s["loss"] is None or not math.isfinite(s["loss"]) for s in steps):
        return "non-finite loss"
    return ""


def run_line(check: str, strategy: str, ranks: int, overrides: dict, base: dict, out) -> Line:
    from labkit import RunFailed, run
    from labkit.profiles import make_config

    line = Line(check, ranks)
    try:
        folder = out / f"{check.replace(' ', '-').replace('+', '_')}-x{ranks}"
        cfg = make_config("synthetic", strategy=strategy, nproc=ranks, out_dir=str(folder), **base, **overrides)
    except ConfigError as error:  # a combination the method refuses, or too few GPUs
        line.note = first_line(error)
        return line
    try:
        result = run(cfg, progress=False)
    except RunFailed as error:  # the failing rank and its last words
        line.result, line.note = "FAIL", first_line(error)
        return line
    except Exception as error:  # e.g. a run that never ended: the line says so, the table goes on
        line.result, line.note = "FAIL", f"{type(error).__name__}: {first_line(error)}"
        return line
    line.figures, problem = figures(result), judge(result)
    line.result, line.note = ("FAIL", problem) if problem else ("pass", "")
    return line


def resume_line(ranks: int, base: dict, out) -> Line:
    """Kill rank 0 at step 3; torchrun restarts the job, which resumes from step 2's checkpoint."""
    line = run_line(f"kill-and-resume {BASELINE}", BASELINE, ranks, {"fault": "0:3:kill", "max_restarts": 1,
                                                          "checkpoint_every": 2}, base, out)
    line.note = line.note or "killed at step 3, resumed from step 2"
    return line


def harness_line(ranks: int) -> Line:
    from labkit.measure.bench import harness

    line = Line("harness: labkit ddp / plain DDP (bf16+cl)", ranks)
    try:
        outcome = harness(ranks, steps=40, timing_warmup=10, repeats=2, amp="bf16", channels_last=True)
    except ConfigError as error:  # e.g. no native bf16 on this GPU
        line.note = first_line(error)
        return line
    except Exception as error:  # a failed subprocess or run: the line says so, the table goes on
        line.result, line.note = "FAIL", f"{type(error).__name__}: {first_line(error)}"
        return line
    ratio = outcome["ratio_of_medians"]
    line.figures = {"img_s": statistics.median(outcome["labkit_img_s"])}
    line.result = "pass" if ratio >= HARNESS_TARGET else "FAIL"
    line.note = f"ratio {ratio:.3f} (plain {statistics.median(outcome['plain_img_s']):.0f} img/s; target ≥ {HARNESS_TARGET})"
    return line


def first_line(error: Exception) -> str:
    """An error's first line, fit for a table cell."""
    return (str(error).strip().splitlines() or [""])[0].replace("|", "/")


def table(lines: list[Line]) -> str:
    """The markdown table docs/BENCHMARKS.md takes as it is."""
    def number(value, fmt, unit=""):
        return "—" if value is None else format(value, fmt) + unit

    rows = ["| check | ranks | img/s | step ms | sync share | exposed comm | MB sent/step | collectives/step | result |",
            "|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        f = line.figures
        rows.append(f"| {line.check} | {line.ranks} | {number(f.get('img_s'), ',.0f')} | {number(f.get('step_ms'), '.1f')} "
                    f"| {number(f.get('sync_pct'), '.1f', ' %')} | {number(f.get('exposed_pct'), '.1f', ' %')} "
                    f"| {number(f.get('mb_sent'), '.1f')} | {number(f.get('collectives'), '.0f')} "
                    f"| {line.result}{': ' + line.note if line.note else ''} |")
    return "\n".join(rows)


def hold_to_target(line: Line, gpu_name: str) -> Line:
    """On an H100, single-GPU ResNet-50 with amp + channels_last must reach the published speed."""
    if line.check == "single bf16+cl" and "H100" in gpu_name and line.result == "pass" \
            and line.figures["img_s"] < H100_TARGET_IMG_S:
        line.result, line.note = "FAIL", f"below {H100_TARGET_IMG_S} img/s (the H100 target)"
    return line


def no_gpu_line() -> str | None:
    """One line when there is no GPU to check, else None."""
    from labkit import hardware

    if hardware.gpu_count():
        return None
    problem = hardware.unusable_gpus()
    return f"gpu-check: {problem}; nothing checked" if problem else "gpu-check: no GPU visible to torch; nothing to check"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit machine --gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="synthetic steps per run (default 30)")
    parser.add_argument("--timing-warmup", dest="timing_warmup", type=int, default=5,
                        help="steps left out of the figures at the start of each run (default 5)")
    parser.add_argument("--strategies", help="comma-separated methods (default: every one)")
    args = parser.parse_args(argv)
    missing = no_gpu_line()
    if missing:
        print(missing)
        return 0
    import torch

    from labkit import hardware
    from labkit.strategies import REGISTRY

    gpus, name = hardware.gpu_count(), hardware.gpu_names()[0]
    strategies = args.strategies.split(",") if args.strategies else list(REGISTRY)
    out = results_root() / "bench" / "gpu_check" / time.strftime("%Y%m%d-%H%M%S")
    base = dict(epochs=1, synthetic_steps=args.steps, timing_warmup_steps=args.timing_warmup, calibration_steps=5)
    header = (f"{gpus} × {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"NCCL {hardware.nccl_version()}, synthetic profile (ResNet-50, batch 64 per GPU), {args.steps} steps")
    print(f"gpu-check: {header}; runs in {out}", flush=True)
    lines = []
    for check, strategy, ranks, overrides in plan(strategies, gpus):
        lines.append(hold_to_target(run_line(check, strategy, ranks, overrides, base, out), name))
        print(f"  {check} ×{ranks}: {lines[-1].result} {lines[-1].note}", flush=True)
    lines.append(harness_line(gpus))
    lines.append(resume_line(gpus, base, out))
    text = f"{header}\n\n{table(lines)}\n"
    print("\n" + text)
    bench = results_root() / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "gpu_check.md").write_text(text)
    (bench / "gpu_check.json").write_text(json.dumps({"header": header, "lines": [asdict(x) for x in lines]}, indent=1))
    failed = sum(line.result == "FAIL" for line in lines)
    print(f"gpu-check: {len(lines)} lines, {failed} failed; table in {bench / 'gpu_check.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
