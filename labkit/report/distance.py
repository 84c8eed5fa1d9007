"""How far apart two runs' parameters ended: the measured form of "the same update".

relative distance = max |a − b| over every parameter ÷ max |b| (b: the reference run,
usually DDP). BatchNorm's running statistics are buffers, not parameters, and are left
out. In float32 the exact methods differ from DDP by rounding only (floating-point
addition is not associative, and each method sums in its own order); BatchNorm and the
learning rate can amplify that rounding over the steps. In float64 (`--set dtype=float64`)
the same methods agree to ~1e-12. torch is imported only when a distance is computed.
"""

from __future__ import annotations

from pathlib import Path

from labkit.config import results_root

from .selection import method, same_setup


def relative_distance(run_a: str | Path, run_b: str | Path) -> float:
    """max |a − b| ÷ max |b| over the trainable parameters of two runs' checkpoint.pt."""
    import torch

    a = torch.load(Path(run_a) / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(Path(run_b) / "checkpoint.pt", weights_only=True)["model"]
    keys = [k for k in b if b[k].is_floating_point() and "running_" not in k]
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in keys)
    return diff / max(b[k].double().abs().max().item() for k in keys)


def distance_sentence(result: dict, results: list[dict], reference: str) -> str:
    """A sentence on how far this run ended from the latest run of the `reference` method
    with the same setup (selection.same_setup), or why no distance can be given."""
    others = [r for r in same_setup(result, results) if method(r) == reference and r.get("path")]
    if not others:
        return (f"No {reference} run with the same setup (profile, ranks, batch, learning rate, seed, steps) is in "
                f"results/runs: run its notebook with the same parameters to measure the distance.")
    ref = others[-1]
    here = result.get("path") or results_root() / "runs" / result["name"]  # job.result() holds no path
    distance = relative_distance(here, ref["path"])
    return (f"After {len(result.get('steps', []))} steps the parameters of {method(result)} differ from "
            f"{reference}'s ({ref['name']}) by {distance:.1e} relative to the largest parameter "
            f"(dtype {(result.get('config') or {}).get('dtype', 'float32')}).")
