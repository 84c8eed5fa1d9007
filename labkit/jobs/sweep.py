"""`labkit sweep`: methods side by side, interleaved, each repeated — a comparison that a
drifting machine cannot flip.

    sweep(["ddp", "ps"], repeats=2, profile="cpu")   # runs ddp ps ddp ps, one after another
    sweep(["ddp", "ddp accumulate=4", "localsgd sync_every=4"], repeats=2)   # a method with its own settings

Why interleaved: a machine drifts while it works (another program starts, a laptop clocks
down as it heats, a cache warms). Run all of ddp's repeats and then all of ps's, and a
drift lands on one method only and passes for a difference between methods. Run them in
rounds (a b c, a b c, …) and every round gives each method the same machine; what drift
is left shows up as the spread between a method's repeats, which the comparison reports
(labkit/report/frames.comparison_table). With several world sizes (`sizes`, the scaling
plot) each round runs every method at every size.
"""

from __future__ import annotations

import re
import time
from pathlib import Path


def plan(strategies: list[str], repeats: int = 1, sizes: list[int] | None = None) -> list[tuple[int, str, int | None]]:
    """The runs in the order they run: (round, strategy, world size or None for the method's
    own default), round by round: [(1, a), (1, b), (2, a), (2, b), …]."""
    return [(k, strategy, n) for k in range(1, repeats + 1) for strategy in strategies for n in (sizes or [None])]


def method_spec(spec: str) -> tuple[str, dict]:
    """'localsgd sync_every=4' → ("localsgd", {"sync_every": 4}): a method and settings of its
    own (config fields or the method's options, as --set takes them)."""
    from labkit.config import parse_overrides

    strategy, *settings = spec.split()
    return strategy, parse_overrides(settings)


def run_name(strategy: str, profile: str, stamp: str, round_: int, nproc: int | None) -> str:
    """A run folder name that says what ran: e.g. ddp-cpu-20260101-120000-r2 (-n4 with sizes).
    A file spec (path/to/mine.py:Mine) keeps only its letters, digits, '.', '_' and '-'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", strategy.split("/")[-1].replace(" ", "-")).strip("_")
    return f"{stem}-{profile}-{stamp}-r{round_}" + (f"-n{nproc}" if nproc else "")


def sweep(strategies: list[str] | str, repeats: int = 1, profile: str = "auto", overrides: dict | None = None,
          sizes: list[int] | None = None, out: str | Path | None = None, progress: bool = True,
          seed_per_round: bool = False) -> list[dict]:
    """Run every method `repeats` times, interleaved (plan()), and return their results in
    that order. `overrides` are RunConfig fields and method options for every run (e.g.
    max_steps); an `nproc` there sets the ranks of every method that does not fix its own
    (a one-process method keeps its one). `out` is the folder the runs go into (default
    results/runs/<name>). `seed_per_round`: round k runs with seed k − 1, so repeats show how
    much the result itself (an accuracy) varies with the initial weights and data order; off,
    every round has the same seed and repeats differ only by the machine (timing). Runs of
    different seeds are different setups to the timing comparison (selection.COMPARE_KEYS)."""
    from labkit import run
    from labkit.profiles import make_config
    from labkit.strategies import load_strategy

    strategies = [strategies] if isinstance(strategies, str) else list(strategies)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    order = plan(strategies, repeats, sizes)
    resolved = make_config(profile, strategy=method_spec(strategies[0])[0]).profile  # "auto" → the profile it picks, for the names
    results = []
    for i, (round_, spec, nproc) in enumerate(order, 1):
        strategy, own = method_spec(spec)
        config = {**(overrides or {}), **own}
        if seed_per_round:  # round k trains from seed k − 1: repeats then spread as training itself does
            config["seed"] = round_ - 1
        if "nproc" in load_strategy(strategy).about.defaults:  # the method fixes its ranks (one process)
            config.pop("nproc", None)
        if nproc:
            config["nproc"] = nproc
        name = run_name(spec, resolved, stamp, round_, nproc)
        if out:
            config["out_dir"] = str(Path(out) / name)
        cfg = make_config(profile, strategy=strategy, name=name, **config)
        print(f"== run {i}/{len(order)}, round {round_}/{repeats}: {spec} on {cfg.nproc} rank(s) → {cfg.out_dir}",
              flush=True)
        results.append(run(cfg, progress=progress))
    return results
