"""`labkit sweep`: one method over several world sizes, one run after another (the scaling plot)."""

from __future__ import annotations


def sweep(strategy: str, sizes: list[int], profile: str, overrides: dict) -> list[dict]:
    from labkit import run
    from labkit.profiles import make_config

    results = []
    for n in sizes:
        cfg = make_config(profile, strategy=strategy, nproc=n, **overrides)
        print(f"== {strategy} on {n} rank(s) → {cfg.out_dir}", flush=True)
        results.append(run(cfg))
    return results
