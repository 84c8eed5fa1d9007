"""Benchmarks that print ratios measured side by side in one run.

- `labkit bench collectives`: the nccl-tests-style microbenchmark (labkit/measure/collectives.py),
  its JSON, a busbw plot and the alpha–beta fit the report's cost model uses.
- `labkit bench harness`: labkit's DDP against a plain DDP script (bench/plain_ddp.py),
  alternated over repeats: is labkit's measuring free?

Each starts its torchrun through labkit.jobs.command, as every run does.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from labkit.config import LAB_ROOT, results_root
from labkit.jobs.command import Command, run


def default_ranks() -> int:
    """One rank per GPU on a GPU machine, else the cpu profile's 4."""
    from labkit import hardware

    return hardware.gpu_count() or 4


def check_ranks(nproc: int) -> None:
    """On GPUs, one rank per GPU: the same check as a run's (profiles.check_devices)."""
    from types import SimpleNamespace

    from labkit import hardware
    from labkit.profiles import check_devices

    if hardware.gpu_count():
        check_devices(SimpleNamespace(device="cuda", nproc=nproc, ranks_per_node=nproc, amp="off", backend="nccl"))


def gpu_lock() -> Path | None:
    """On a GPU machine the lock every labkit run takes (labkit.jobs.job), so that a benchmark
    never shares the GPUs with a run; on CPU (each job its own cores) none."""
    from labkit import hardware

    if not hardware.gpu_count():
        return None
    lock = results_root() / ".cuda.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    return lock


def run_collectives(nproc: int, out_dir: Path, max_mb: float = 128, repeats: int = 5, ops: tuple | None = None,
                    min_kb: float = 1, nodes: int = 1, link: str = "") -> dict:
    """The microbenchmark on `nproc` ranks; with `nodes` > 1, across that many emulated nodes
    (labkit.jobs.cluster) whose links run at `link`: α and β of the link, not of loopback."""
    from labkit.report.plots import bandwidth

    from .collectives import OPS
    from labkit.report.costmodel import fit

    check_ranks(nproc)
    path = out_dir / "collectives.json"
    args = [str(path), str(max_mb), str(min_kb), "2", str(repeats), ",".join(ops or OPS)]
    command = Command("labkit.measure.collectives", args, nproc=nproc // nodes, run_dir=out_dir,
                      run_id="collectives", queue_lock=gpu_lock(), cwd=LAB_ROOT)
    if nodes > 1:
        run_emulated(command, nodes, link)
    else:
        run(command)
    bench = json.loads(path.read_text())
    bench.update(nodes=nodes, link=link or None)
    bench["fits"] = fit(bench)
    path.write_text(json.dumps(bench, indent=1))
    bandwidth(bench).savefig(out_dir / "collectives.png", dpi=120)
    return bench


def run_emulated(command: Command, nodes: int, link: str, timeout_s: float = 1800) -> None:
    from labkit.config import parse_rate
    from labkit.jobs.cluster import EmulatedCluster

    if link:
        parse_rate(link)  # a one-line error for a rate tc cannot read, before any namespace is made
    job = EmulatedCluster(command, nodes, link)
    try:
        code = job.wait(timeout_s)
    finally:
        job.kill()
        job.close()
    if code != 0:
        raise RuntimeError(f"the microbenchmark on {nodes} emulated nodes failed (exit code {code}):\n"
                           f"{job.handles[0].output()}")


def collectives_table(bench: dict) -> str:
    import pandas as pd

    from labkit.report.costmodel import LOCAL

    frame = pd.DataFrame(bench["rows"])
    frame["size"] = frame.size_bytes.map(lambda b: f"{b / 1024:.0f} KB" if b < 1 << 20 else f"{b / (1 << 20):.0f} MB")
    table = frame.pivot_table(index="size", columns="op", values="busbw_gb_s", sort=False)
    fits = "\n".join(f"  {op:<15} α = {f['alpha_s'] * 1e6:9.1f} µs   1/β = {1e-9 / f['beta_s_per_byte']:8.3f} GB/s"
                     if f["beta_s_per_byte"] else f"  {op:<15} α = {f['alpha_s'] * 1e6:9.1f} µs"
                     for op, f in bench["fits"].items() if op != LOCAL)
    text = f"busbw (GB/s):\n{table.round(3).to_string()}\n\nalpha-beta fit (t = α + β·S):\n{fits}"
    if bench.get("local_rows"):  # the γ term: a method's own passes, GB/s = 1 / γ at each size
        passes = pd.DataFrame(bench["local_rows"])
        passes["size"] = passes.size_bytes.map(lambda b: f"{b / 1024:.0f} KB" if b < 1 << 20 else f"{b / (1 << 20):.0f} MB")
        table = passes.pivot_table(index="size", columns="kind", values="gb_s", sort=False)
        text += (f"\n\nlocal passes, GB/s = 1/γ (γ: seconds per byte), on every rank at once, and _alone on rank 0 "
                 f"while the others wait ({bench.get('threads_per_rank', '?')} thread(s) a rank):\n"
                 f"{table.round(2).to_string()}")
    return text


def plain_ddp_throughput(nproc: int, steps: int, timing_warmup: int, gpu: dict | None = None,
                         out_dir: Path | None = None) -> float:
    """The plain script's img/s: the cpu profile's training, or with `gpu` ({"amp", "channels_last"})
    the synthetic profile's (ResNet-50, batch 64 per GPU, random batches drawn on the GPU, NCCL)."""
    from labkit.datasets.tiny import make_tiny

    data = "synthetic" if gpu else str(make_tiny(LAB_ROOT / "data" / "tiny"))
    extra = [gpu["amp"], str(gpu["channels_last"]).lower()] if gpu else []
    out_dir = out_dir or results_root() / "bench" / "harness"
    # Started as labkit's runs are (a fair ratio), but a plain script: a fresh interpreter per rank.
    tree = run(Command(str(LAB_ROOT / "bench" / "plain_ddp.py"), [data, str(steps), str(timing_warmup), *extra],
                       nproc=nproc, run_dir=out_dir, log_name="plain-ddp.log", run_id="plain-ddp", fork_ranks=False,
                       queue_lock=gpu_lock(), cwd=LAB_ROOT))
    return float(tree.output(10_000).split("throughput_img_s")[-1].split()[0])


def labkit_ddp_throughput(nproc: int, steps: int, timing_warmup: int, out: Path, gpu: dict | None = None) -> float:
    from labkit import run
    from labkit.profiles import make_config
    from labkit.strategies import BASELINE

    if gpu:  # the synthetic profile: one epoch of `steps` batches, as the plain script
        cfg = make_config("synthetic", strategy=BASELINE, nproc=nproc, epochs=1, synthetic_steps=steps,
                          max_steps=steps, timing_warmup_steps=timing_warmup, out_dir=str(out), **gpu)
        return run(cfg, progress=False)["summary"]["throughput_wall_img_s"]  # wall-clock, as the plain script
    # epochs=steps: enough epochs that max_steps, not the dataset's size, ends the run, as in the plain script
    # batch_size=16 per rank, as the plain script (the profile's recipe would divide its global batch)
    cfg = make_config("cpu", strategy=BASELINE, nproc=nproc, epochs=steps, max_steps=steps, timing_warmup_steps=timing_warmup,
                      batch_size=16, out_dir=str(out))
    return run(cfg, progress=False)["summary"]["throughput_wall_img_s"]  # wall-clock, as the plain script


def harness(nproc: int | None = None, steps: int = 40, timing_warmup: int = 5, repeats: int = 3, out_dir: Path | None = None,
            amp: str = "off", channels_last: bool = False) -> dict:
    """Alternate plain and labkit runs; the ratio of their medians, with each repeat's ratio.
    On a GPU machine both train the synthetic profile on the GPUs (amp, channels_last as
    given); without one, the cpu profile on gloo."""
    from labkit import hardware

    nproc = nproc or default_ranks()
    check_ranks(nproc)
    gpu = dict(amp=amp, channels_last=channels_last) if hardware.gpu_count() else None
    out_dir = out_dir or results_root() / "bench" / "harness"
    plain, lab = [], []
    for i in range(repeats):
        plain.append(plain_ddp_throughput(nproc, steps, timing_warmup, gpu, out_dir))
        lab.append(labkit_ddp_throughput(nproc, steps, timing_warmup, out_dir / f"repeat-{i}-{int(__import__('time').time())}",
                                         gpu))
        print(f"repeat {i + 1}/{repeats}: plain {plain[-1]:.1f} img/s, labkit {lab[-1]:.1f} img/s", flush=True)
    ratios = [b / a for a, b in zip(plain, lab)]
    return {"profile": "synthetic" if gpu else "cpu", "nproc": nproc, "plain_img_s": plain, "labkit_img_s": lab,
            "ratios": ratios,
            "ratio_of_medians": statistics.median(lab) / statistics.median(plain),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}
