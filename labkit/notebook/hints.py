"""Tiered hints for the exercises, revealed one at a time by a call, never written in the notebook.

    labkit.hint("ex4", 1)   # in a cell of exercise 4: prints hint 1 and records that it was opened

A hint in the .ipynb itself (a folded <details> block) is plain text to any editor, a code
host's raw view or `nbconvert --to script`: a student saw every tier before writing a line.
Here each tier prints only once the one before it has been opened, and every opening is
appended to `hints_opened.json` in the notebook's folder (the working directory of its
kernel). nbgrader collects that folder with the notebook, and the course's export
(labkit.assignments.export, set in assignments/nbgrader_config.py) adds a `hints_opened`
column to grades.csv. The texts live in this file only; make_sources.py writes the calls.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

RECORD = "hints_opened.json"  # beside the notebook; no leading dot, so nbgrader's submit and collect keep it

HINTS = {
    "ex1_allreduce": [
        'Which collective leaves the *sum* over all ranks on every rank? The primer (00b) ran it live.',
        '`dist.all_reduce(t, op=dist.ReduceOp.SUM)` works in place on `t`; the number of ranks is `self.world`; the loop counts what it sends, so there is nothing to count.',
        'One loop over `grads_of(model)`: reduce, then divide.',
    ],
    "ex2_bucketed": [
        "Two parts: `prepare` decides, once, which parameters go together; `sync_gradients` runs one collective per group. Exercise 1's loop is the inner part.",
        "`flatten(list_of_tensors)` makes one buffer, `unflatten_into(flat, list_of_tensors)` copies it back; `nbytes(p)` is a parameter's size in bytes; `reversed(list)` walks backwards.",
        'Keep a current list and its size in bytes; append, add, and when the size reaches the limit, close the list and start an empty one. Do not forget the last, unfinished list.',
    ],
    "ex3_overlap": [
        '`p.register_post_accumulate_grad_hook(fn)` makes autograd call `fn(p)` inside backward, right after `p.grad` is final. `functools.partial(self.on_grad_ready, index)` is a function that remembers `index`.',
        '`work = dist.all_reduce(t, async_op=True)` returns at once; `work.wait()` blocks until `t` holds the sum. Keep what you launched in `self.in_flight`.',
        "Count arrivals in `self.arrived[index]`; when it equals the bucket's length, flatten, divide and launch. In `sync_gradients`: wait, copy back, and zero the counts for the next step.",
    ],
    "ex4_ring": [
        'Write `exchange` first: a blocking `dist.send` then `dist.recv` on every rank can deadlock (everyone sends, nobody receives). `dist.batch_isend_irecv([dist.P2POp(dist.isend, a, right), dist.P2POp(dist.irecv, b, left)])` posts both at once; wait for every request it returns.',
        'In the reduce-scatter receive into a temporary (`torch.empty_like(chunk)`) and add it; in the all-gather receive straight into the chunk.',
        'The indices, with r the rank and s = 0 … n−2: reduce-scatter sends chunk (r − s) mod n and receives chunk (r − s − 1) mod n; all-gather sends chunk (r − s + 1) mod n and receives chunk (r − s) mod n.',
    ],
    "ex5_ps": [
        "One flat buffer per message: `flatten([p.grad for p in params])`; copy back with `unflatten_into` (it keeps each tensor's layout; `parameters_to_vector` would fail on channels_last weights).",
        'The server receives from ranks 1 … n−1: post every `dist.irecv` first, then wait for each and add; a worker simply `dist.send`s. The pull is the same in the other direction.',
        "Writing into parameters needs `with torch.no_grad():`. The server's update is `super().update(optimizer, scaler)`; a worker's is nothing.",
    ],
    "ex6_ps_sharded": [
        '`reduce_scatter_single(out, inp)`: `inp` (n·len values) is summed over ranks and rank i keeps slice i in `out` (len values). `all_gather_single(out, inp)`: the reverse. The primer ran both.',
        "`self.pad(flat)` pads to `self.padded`; the shard is a slice of the padded flat parameters, from `rank * shard_len`; `unflatten_into` ignores extra values at the end. Give new buffers the shard's `dtype=` and `device=`.",
        '`update` steps `self.shard_optimizer` with `super().update(self.shard_optimizer, scaler)`.',
        'The shard\'s optimizer is the loop\'s class with the loop\'s hyperparameters (as torch\'s ZeroRedundancyOptimizer builds its own): `type(optimizer)([{**optimizer.param_groups[0], "params": [self.shard]}])` works for SGD and AdamW alike (`**optimizer.defaults` does not: AdamW refuses one of its own defaults).',
    ],
    "ex7_fsdp": [
        "Hooks: `layer.register_forward_pre_hook(fn)` calls `fn(module, args)` before the layer's forward, `layer.register_forward_hook(fn)` calls `fn(module, args, output)` after it, and `p.register_post_accumulate_grad_hook(fn)` calls `fn(p)` once `p.grad` is final (exercise 3). In a loop, `lambda module, args, i=index: self.gather(i)` remembers *this* index (a bare `index` would be the last one).",
        "Before backward: `output.register_hook(fn)` calls `fn(grad)` when the gradient for the layer's output arrives, that is just before the layer's own backward; register it in `after_forward`, only when `output.requires_grad` (not in validation). `gather`: `allocate(full)`, then `dist.all_gather_single(full, shard.detach())`.",
        "`on_grad_ready`: flatten the layer's gradients, pad them with zeros to `self.full[index].numel()`, divide by the world size; `shard.grad = torch.empty_like(shard)`; `dist.reduce_scatter_single(shard.grad, grads, op=dist.ReduceOp.SUM)`; then `p.grad = None` for the layer's parameters and `free(self.full[index])`.",
    ],
}


def exercise_name(exercise: str) -> str:
    """"ex4", "4" or "ex4_ring" → "ex4_ring"."""
    key = str(exercise).strip()
    key = key if key.startswith("ex") else f"ex{key}"
    found = [name for name in HINTS if name == key or name.split("_", 1)[0] == key]
    if len(found) != 1:
        raise ValueError(f"no exercise {exercise!r}: one of {', '.join(n.split('_', 1)[0] for n in HINTS)}")
    return found[0]


def opened(folder: Path | str = ".") -> dict[str, list[int]]:
    """The tiers opened so far in `folder`, per exercise: {"ex4_ring": [1, 2]}."""
    path = Path(folder) / RECORD
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    tiers: dict[str, list[int]] = {}
    for record in records if isinstance(records, list) else []:
        if isinstance(record, dict) and record.get("exercise") in HINTS and isinstance(record.get("tier"), int):
            tiers.setdefault(record["exercise"], [])
            if record["tier"] not in tiers[record["exercise"]]:
                tiers[record["exercise"]].append(record["tier"])
    return {name: sorted(t) for name, t in tiers.items()}


def hint(exercise: str, tier: int = 1, folder: Path | str = ".") -> None:
    """Print hint `tier` of `exercise` (1: a nudge … last: nearly the answer) and record that it
    was opened. A tier opens only after the one before it: read them in order."""
    name = exercise_name(exercise)
    texts = HINTS[name]
    if not 1 <= int(tier) <= len(texts):
        raise ValueError(f"{name} has hints 1 to {len(texts)}, not {tier}")
    tier = int(tier)
    seen = opened(folder).get(name, [])
    if tier > 1 and tier - 1 not in seen:
        text = (f"Hint {tier} of {name} opens after hint {tier - 1}: run labkit.hint({exercise!r}, {tier - 1}) "
                f"first (one tier at a time, from a nudge to nearly the answer).")
        print(text)
        return
    if tier not in seen:
        path = Path(folder) / RECORD
        try:
            records = json.loads(path.read_text())
            records = records if isinstance(records, list) else []
        except (OSError, ValueError):
            records = []
        records.append({"exercise": name, "tier": tier, "opened": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        path.write_text(json.dumps(records, indent=1) + "\n")
    print(f"Hint {tier} of {len(texts)} ({name}): {texts[tier - 1]}")  # printed, not returned: shown once
