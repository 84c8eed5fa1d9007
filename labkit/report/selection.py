"""Which runs a comparison keeps: result files read back, labelled, and selected.

The first step of the one comparison pipeline (labkit/report/__init__.py): every
result.json is loaded, whatever its status, and `select_runs` keeps the runs a fair
comparison may hold, giving the reason for each one it leaves out. A run is labelled by
`result["method"]`, the label its strategy wrote (falling back to the strategy's name),
so this file names no method. It imports no torch: reading results must stay fast.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from labkit.config import results_root


def load_results(paths=None, status: str | None = None) -> list[dict]:
    """Every result.json under results/runs (or under the given run folders), each with its
    folder as `path`. `status="ok"` keeps only finished runs; the default keeps every run, so
    that `select_runs` can say why a failed one is left out."""
    paths = [Path(p) for p in paths] if paths else [results_root() / "runs"]
    results = []
    for path in paths:
        files = [path] if path.name == "result.json" else sorted(path.rglob("result.json")) if path.exists() else []
        for file in files:
            try:
                result = json.loads(file.read_text())
                if not isinstance(result, dict) or "status" not in result:
                    raise ValueError("not a labkit result")
            except (OSError, ValueError) as error:  # cut short, garbage, another program's JSON: listed, not fatal
                result = {"status": "unreadable", "strategy": file.parent.name, "name": file.parent.name,
                          "failure": {"exception": f"result.json unreadable: {str(error).splitlines()[0][:120]}"}}
            result["path"] = str(file.parent)
            if status is None or result.get("status") == status:
                results.append(result)
    return results


def method(result: dict) -> str:
    """The method a run measured, as its strategy labels itself (e.g. "bucketed fp16": the
    options that change what goes on the wire make a different method)."""
    return result.get("method") or result["strategy"]


def images_per_step(result: dict) -> int | None:
    """Images one optimizer step consumes over all ranks (the global batch)."""
    return result.get("global_batch") or result.get("config", {}).get("global_batch")


def parallel_units(result: dict) -> int | None:
    """How many devices can compute at once on the run's machine: its GPUs for a GPU run,
    its CPU cores for a CPU run (from result["env"]); None when the result does not say."""
    env = result.get("env") or {}
    if str(result.get("device", "cpu")).startswith("cuda"):
        return len(env.get("gpus") or []) or None
    return env.get("cpu_count")


def is_short(result: dict) -> bool:
    """A demonstration run, stopped by `max_steps` before its epochs ended: its accuracy
    says nothing about the method, so the notebooks show none for it."""
    return bool((result.get("config") or {}).get("max_steps"))


@dataclass
class Selection:
    """The runs a comparison keeps, and every run it leaves out with the reason."""
    kept: list[dict] = field(default_factory=list)
    left_out: list[tuple[dict, str]] = field(default_factory=list)
    outliers: list[dict] = field(default_factory=list)  # also in left_out, with their reason

    def lines(self) -> list[str]:
        """One line per left-out run, for the report and the notebooks."""
        return [f"left out {r.get('name', '?')} ({len(r.get('steps', []))} steps): {why}" for r, why in self.left_out]


def select_runs(results: list[dict], profile: str | None = None) -> Selection:
    """Which runs a fair comparison keeps, and why each other run is left out:
    - not finished (`status` other than ok): no summary to compare;
    - another profile than `profile` (when given): a different model and dataset;
    - a fault was injected: a demonstration of failure and resume, not a measurement;
    - shorter than the longest run of the same method and world size: total time and
      accuracy depend on the length of training, so a quick check is not averaged with a
      full run. Repeats of the same length are kept (they give the spread)...
    - ...but for an outlier: a repeat far off the others of its method and setup (`outliers`:
      over 2× faster or slower than their median), which is left out with its figures."""
    chosen, candidates = Selection(), []
    for r in results:
        cfg = r.get("config", {})
        if r.get("status") == "unreadable":
            chosen.left_out.append((r, r["failure"]["exception"]))
        elif r.get("status", "ok") != "ok":  # a hang or desync: which rank broke the collectives' sequence
            story = (r.get("failure") or {}).get("collectives") or {}
            why = f": {story['summary'].rsplit(' — ', 1)[-1]}" if story.get("odd_rank") is not None else ""
            chosen.left_out.append((r, f"status {r.get('status')}{why}"))
        elif profile and cfg.get("profile") != profile:
            chosen.left_out.append((r, f"profile {cfg.get('profile')}, not {profile}"))
        elif cfg.get("fault"):
            chosen.left_out.append((r, "fault injected (a demonstration, not a measurement)"))
        else:
            candidates.append(r)
    longest = {}
    for r in candidates:
        key = (method(r), r.get("world_size"))
        longest[key] = max(longest.get(key, 0), len(r.get("steps", [])))
    full = []
    for r in candidates:
        most = longest[(method(r), r.get("world_size"))]
        if len(r.get("steps", [])) == most:
            full.append(r)
        else:
            chosen.left_out.append((r, f"a {most}-step run of {method(r)} on {r.get('world_size')} rank(s) is compared"))
    far = outliers(full)
    for r in full:
        if id(r) in far:
            chosen.left_out.append((r, far[id(r)]))
            chosen.outliers.append(r)
        else:
            chosen.kept.append(r)
    return chosen


OUTLIER_RATIO = 2.0  # a repeat 2× faster or slower than the median of its others was not on the same machine


def throughput_of(result: dict) -> float | None:
    return (result.get("summary") or {}).get("throughput_img_s")


def outliers(results: list[dict]) -> dict[int, str]:
    """The runs far off the other repeats of their method, world size and setup, each with its
    reason (keyed by id() of the result dict).

    The rule: a run is an outlier when its steady throughput is more than OUTLIER_RATIO (2×)
    above or below the median of the *other* repeats — measured against the others, so the run
    itself cannot drag the reference towards it. It needs at least 2 others (3 runs): of two
    runs that disagree, nothing says which one the machine disturbed (frames.disagreements
    flags them instead). Why not median ± k·MAD: with 3–5 repeats the MAD is itself noise (two
    identical repeats give a MAD of 0, and any third run would be flagged); a factor of 2 is
    beyond any method's own repeat-to-repeat spread on a quiet machine (timing.DISTURBED_FACTOR
    says the same of single steps), and it catches the busy moment issue 32 saw: `single` at
    17.6 img/s beside 181.7. An outlier is left out of every median, spread, ratio and verdict,
    and the report says so with its figures."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if throughput_of(r):
            groups.setdefault((comparison_setup(r), method(r), r.get("world_size")), []).append(r)
    far = {}
    for group in groups.values():
        if len(group) < 3:
            continue
        for r in group:
            others = statistics.median(throughput_of(o) for o in group if o is not r)
            ratio = throughput_of(r) / others
            if ratio > OUTLIER_RATIO or ratio < 1 / OUTLIER_RATIO:
                disturbed = (r.get("summary") or {}).get("disturbed_steps")
                far[id(r)] = (f"an outlier: {throughput_of(r):.1f} img/s, {ratio:.2f}× the median of its "
                              f"{len(group) - 1} other repeats ({others:.1f} img/s), beyond the {OUTLIER_RATIO:g}× "
                              "rule: the machine was not the same for it"
                              + (f" ({disturbed} of its own steps disturbed)" if disturbed else "")
                              + "; left out of the medians, the regime and every verdict")
    return far


SETUP_KEYS = ("profile", "model", "lr", "seed", "dtype", "batch_size", "epochs", "max_steps")  # keys of config.json


def same_setup(result: dict, results: list[dict]) -> list[dict]:
    """The finished runs (fault-free, any method) made with the same setup as `result`:
    profile, model, world size, global batch, learning rate, seed, number type and number
    of steps. Those are the runs a sentence may compare it with."""
    def setup(r):
        cfg = r.get("config") or {}
        return (r.get("world_size"), images_per_step(r), len(r.get("steps", [])), *(cfg.get(k) for k in SETUP_KEYS))

    mine = setup(result)
    return [r for r in results if r.get("status", "ok") == "ok" and not (r.get("config") or {}).get("fault")
            and not (r.get("config") or {}).get("resume") and setup(r) == mine]


# What makes two runs comparable, method and world size aside (keys of config.json): the same
# work (model, data, numbers, batch, length) on the same kind of machine and links. A method's
# figures are ranked, divided and given a verdict only against runs of the same setup.
COMPARE_KEYS = ("profile", "model", "dataset", "image_size", "num_classes", "augment", "dtype", "amp",
                "channels_last", "lr", "lr_warmup_steps", "seed", "workers", "timing_warmup_steps", "nodes", "link")


def comparison_setup(result: dict, ignore: tuple = ()) -> tuple:
    """The setup a run is compared within: its length (steps run), global batch, device kind
    and the COMPARE_KEYS of its config (less `ignore`: e.g. nodes and link, to set a run on
    emulated links beside the same work on one machine). Not the method, not the world size:
    `single` on one process and four ranks share a setup when they train the same global batch
    as long."""
    cfg = result.get("config") or {}
    device = str(result.get("device") or "cpu").split(":")[0]
    return (len(result.get("steps", [])), images_per_step(result), device,
            *(cfg.get(k) for k in COMPARE_KEYS if k not in ignore))


def setup_label(result: dict) -> str:
    """A short name for a run's setup, e.g. "8 steps × 64 img" (+ the link of emulated nodes,
    a number type other than float32), for tables and figures."""
    cfg = result.get("config") or {}
    label = f"{len(result.get('steps', []))} steps × {images_per_step(result)} img"
    if cfg.get("link"):
        label += f", link {cfg['link']}"
    if cfg.get("dtype") not in (None, "float32"):
        label += f", {cfg['dtype']}"
    return label


def setup_names(results: list[dict]) -> dict[tuple, str]:
    """comparison_setup → its label; labels made unique (#2, #3) where two setups differ only
    in something the short label does not show (a learning rate, a seed)."""
    names, used = {}, {}
    for r in results:
        key = comparison_setup(r)
        if key not in names:
            label = setup_label(r)
            used[label] = used.get(label, 0) + 1
            names[key] = label if used[label] == 1 else f"{label} #{used[label]}"
    return names
