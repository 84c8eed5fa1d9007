"""Write the six exercise notebooks (nbgrader source versions) from this one file.

    .venv/bin/python assignments/make_sources.py      # → assignments/source/<exercise>/<exercise>.ipynb

The six share one shape, so they are generated: objectives and time, the setup, the
idea, a "predict before you run" cell, the strategy file written with %%writefile (the
parts to write between ### BEGIN SOLUTION / ### END SOLUTION), the instant check
(points), questions answered from the check's own table, and hidden tests (points)
that run the same check on cases the student never saw. Edit here, regenerate, commit
both. nbgrader's `generate_assignment` turns these into the student release.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SOURCE = Path(__file__).resolve().parent / "source"

SETUP = '''# Find the lab (installed in the lab's .venv; else the checkout above this folder).
import sys, pathlib
try:
    import labkit
except ImportError:
    here = pathlib.Path.cwd()
    sys.path.insert(0, str(next(p for p in [here, *here.parents] if (p / "labkit" / "__init__.py").exists())))
    import labkit
print("labkit from", pathlib.Path(labkit.__file__).parent)'''

EXERCISES = [
    dict(
        name="ex1_allreduce", title="Exercise 1 · Average the gradients: one all-reduce per tensor",
        minutes=20, points=(6, 4), file="my_allreduce.py", cls="MyAllReduce", method="allreduce",
        objectives=["say why summing gradients over ranks and dividing by the world size gives the gradient of the global batch",
                    "use `dist.all_reduce` on a tensor in place",
                    "count what an all-reduce puts on the wire: 2(n−1)/n·S bytes per rank"],
        idea="""After `loss.backward()` every rank holds the gradient of the loss on *its own* part of the
batch. The gradient of the whole (global) batch is their mean. `dist.all_reduce(t)` replaces
`t` on every rank with the sum over all ranks; divide by the world size and every rank holds
the same averaged gradient, so every rank takes the same optimizer step — exactly DDP.

The lab's loop calls `sync_gradients(model)` after backward and before the optimizer step.
Count each all-reduce with `self.wire.all_reduce(nbytes(grad))`.""",
        predict="""With the check's model (516 float64 parameters in 6 tensors, S = 4,128 bytes), how many
bytes will rank 0 *send* per step on 2 ranks? On 4 ranks? How many collectives per step?""",
        prediction="bytes_2_ranks, bytes_4_ranks, collectives = None, None, None",
        code='''"""My first synchronization method: average every gradient with its own all-reduce."""
import torch.distributed as dist

from labkit.strategies.base import Strategy, grads_of, nbytes


class MyAllReduce(Strategy):
    def sync_gradients(self, model):
        # For every gradient tensor (grads_of(model)): sum it over all ranks in place,
        # divide it by the world size (self.world), and count it:
        # self.wire.all_reduce(nbytes(grad)).
        ### BEGIN SOLUTION
        for grad in grads_of(model):
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            grad /= self.world
            self.wire.all_reduce(nbytes(grad))
        ### END SOLUTION
''',
        hidden=dict(worlds=(3,), model="odd"),
        questions=["How do the bytes sent per rank change from 2 to 3 to 4 ranks? Compare with 2(n−1)/n·S.",
                   "Why is the number of collectives the same for every world size?",
                   "What would the check say if you forgot to divide by the world size? (Try it, then put the line back.)"],
    ),
    dict(
        name="ex2_bucketed", title="Exercise 2 · Bucketing: fewer, larger all-reduces",
        minutes=30, points=(6, 4), file="my_bucketed.py", cls="MyBucketed", method="bucketed",
        objectives=["explain why many small collectives cost more than a few large ones (the α in α + S·β)",
                    "flatten gradients into one buffer and copy the result back",
                    "group parameters into buckets in *reverse* order, as DDP does"],
        idea="""Every collective pays a fixed latency α before the first byte moves. ResNet-50 has 161
gradient tensors: 161 latencies. Bucketing copies the gradients into a few flat buffers of
about `bucket_mb` megabytes and all-reduces each buffer once: the same bytes, far fewer α.

Fill buckets walking the parameters **in reverse** (backward produces the last layer's
gradient first), appending parameters until the bucket holds at least `bucket_mb` MB
(1 MB = 1024·1024 bytes), then start a new one. `flatten(list)` and
`unflatten_into(flat, list)` from `labkit.strategies.base` do the copying. The check runs
with tiny buckets (`bucket_mb=0.001`, about 1 kB) so the small model gets several.""",
        predict="""The check's model has 6 gradient tensors of 160, 16, 256, 16, 64 and 4 float64 values. With
`bucket_mb=0.001` (1,048 bytes), how many buckets will you make? How many bytes does rank 0
send per step on 4 ranks — more or fewer than in exercise 1?""",
        prediction="buckets, bytes_4_ranks = None, None",
        code='''"""My bucketed all-reduce: a few flat buffers instead of one collective per tensor."""
import torch.distributed as dist

from labkit.strategies.base import Option, Strategy, flatten, nbytes, unflatten_into


class MyBucketed(Strategy):
    options = (Option("bucket_mb", 25.0, "bucket size in MB"),)  # read it as self.options.bucket_mb

    def prepare(self, model, optimizer):
        # Build self.buckets: a list of lists of parameters. Walk the trainable parameters
        # in reverse order; close a bucket once it holds >= bucket_mb * 1024 * 1024 bytes.
        ### BEGIN SOLUTION
        limit = self.options.bucket_mb * 1024 * 1024
        self.buckets, current, size = [], [], 0
        for p in reversed([p for p in model.parameters() if p.requires_grad]):
            current.append(p)
            size += nbytes(p)
            if size >= limit:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        ### END SOLUTION
        return model

    def sync_gradients(self, model):
        # For every bucket: flatten its gradients, all-reduce the flat buffer once,
        # divide by the world size, copy back into the gradients, count it.
        ### BEGIN SOLUTION
        for bucket in self.buckets:
            grads = [p.grad for p in bucket]
            flat = flatten(grads)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world
            unflatten_into(flat, grads)
            self.wire.all_reduce(nbytes(flat))
        ### END SOLUTION
''',
        hidden=dict(worlds=(3,), model="deep", options={"bucket_mb": 0.0002}),
        questions=["How many collectives per step did the check count? Is it the number you predicted?",
                   "Are the bytes per rank different from exercise 1's? Why (not)?",
                   "What `bucket_mb` gives a single bucket for this model? What is lost with one bucket? (→ exercise 3)"],
    ),
    dict(
        name="ex3_overlap", title="Exercise 3 · Overlap communication with backward through gradient hooks",
        minutes=40, points=(6, 4), file="my_overlap.py", cls="MyOverlap", method="overlap",
        objectives=["use autograd's per-parameter hook `register_post_accumulate_grad_hook`",
                    "launch an asynchronous all-reduce (`async_op=True`) and wait for its handle later",
                    "explain why every rank launches the same buckets in the same order"],
        idea="""Backward computes gradients from the last layer to the first. As soon as *every* gradient
of a bucket has arrived, its all-reduce can start — while backward goes on computing the
earlier layers. That is DDP's central trick.

`p.register_post_accumulate_grad_hook(fn)` calls `fn(p)` inside backward right after `p.grad`
is final. Count the arrivals per bucket; when a bucket is complete, flatten it, divide by
the world size, start `dist.all_reduce(flat, async_op=True)` and keep `(bucket, flat, work)`.
In `sync_gradients`, wait for each work handle, copy back, and reset the arrival counts
for the next step. The buckets are given (`make_buckets`, as in exercise 2).""",
        predict="""Will the bytes and collectives differ from exercise 2 with the same buckets? Which of the
three contract calls now does almost no waiting on a real network?""",
        prediction="same_bytes_as_ex2, call_that_waits_less = None, None",
        code='''"""My overlapped all-reduce: each bucket starts its all-reduce during backward."""
import functools

import torch.distributed as dist

from labkit.strategies.base import Option, Strategy, flatten, nbytes, unflatten_into
from labkit.strategies.buckets import make_buckets


class MyOverlap(Strategy):
    options = (Option("bucket_mb", 25.0, "bucket size in MB"),)

    def prepare(self, model, optimizer):
        self.buckets = make_buckets(model.parameters(), self.options.bucket_mb)
        self.arrived = [0] * len(self.buckets)
        self.in_flight = []  # (bucket index, flat buffer, work handle)
        # Register a hook on every parameter of every bucket that calls
        # self.on_grad_ready(bucket_index, param) (functools.partial helps).
        ### BEGIN SOLUTION
        for index, bucket in enumerate(self.buckets):
            for p in bucket:
                p.register_post_accumulate_grad_hook(functools.partial(self.on_grad_ready, index))
        ### END SOLUTION
        return model

    def on_grad_ready(self, index, param):  # called by autograd, inside backward
        # Count the arrival; when the bucket is complete, flatten its gradients, divide by
        # the world size, start an asynchronous all-reduce, remember it, count it.
        ### BEGIN SOLUTION
        self.arrived[index] += 1
        if self.arrived[index] == len(self.buckets[index]):
            flat = flatten([p.grad for p in self.buckets[index]]) / self.world
            work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
            self.in_flight.append((index, flat, work))
            self.wire.all_reduce(nbytes(flat))
        ### END SOLUTION

    def sync_gradients(self, model):
        # Wait for every launched all-reduce, copy the averages back into the gradients,
        # and get ready for the next step.
        ### BEGIN SOLUTION
        for index, flat, work in self.in_flight:
            work.wait()
            unflatten_into(flat, [p.grad for p in self.buckets[index]])
        self.arrived = [0] * len(self.buckets)
        self.in_flight = []
        ### END SOLUTION
''',
        hidden=dict(worlds=(4,), model="odd", options={"bucket_mb": 0.0001}),  # 2 buckets
        questions=["Compare the counts with exercise 2's: what changed, what did not?",
                   "What happens in step 2 if you forget to reset the arrival counts? (Try it.)",
                   "Why must every rank build its buckets in the same order?"],
    ),
    dict(
        name="ex4_ring", title="Exercise 4 · Ring all-reduce from send and receive",
        minutes=60, points=(6, 4), file="my_ring.py", cls="MyRing", method="ring",
        objectives=["build an all-reduce from point-to-point messages: reduce-scatter, then all-gather",
                    "exchange with both neighbours at once so no rank waits on a rank that waits (no deadlock)",
                    "show that each rank sends 2(n−1)/n·S bytes, whatever n is"],
        idea="""Cut the flat gradient buffer into n chunks (`flat.tensor_split(n)`: views, lengths may differ
by one, some may be empty). Ranks form a ring: rank r sends to r+1 and receives from r−1.

* **Reduce-scatter**, steps s = 0 … n−2: send chunk (r − s) mod n, receive into a temporary
  the chunk (r − s − 1) mod n and *add* it. Afterwards rank r holds the full sum of chunk (r+1) mod n.
* **All-gather**, steps s = 0 … n−2: send chunk (r − s + 1) mod n, receive chunk (r − s) mod n
  *into place*.

A blocking `dist.send` followed by `dist.recv` on every rank can deadlock (everyone sends,
nobody receives). Post both at once: `dist.batch_isend_irecv([dist.P2POp(dist.isend, a, right),
dist.P2POp(dist.irecv, b, left)])` and wait for every request. Skip empty chunks.""",
        predict="""With S = 4,128 bytes, how many bytes does each rank send per step on 2 ranks? On 4? How many
point-to-point exchanges (steps) per sync on 4 ranks?""",
        prediction="bytes_2_ranks, bytes_4_ranks, steps_4_ranks = None, None, None",
        code='''"""My ring all-reduce: reduce-scatter then all-gather, from point-to-point messages."""
import torch
import torch.distributed as dist

from labkit.strategies.base import Strategy, flatten, grads_of, nbytes, unflatten_into


class MyRing(Strategy):
    def sync_gradients(self, model):
        grads = grads_of(model)
        flat = flatten(grads) / self.world
        sent = self.ring_all_reduce(flat)
        unflatten_into(flat, grads)
        self.wire.count(sent=sent, received=sent, calls=2 * (self.world - 1))

    def exchange(self, send, recv):
        """Send `send` to the right neighbour while receiving `recv` from the left one."""
        ### BEGIN SOLUTION
        right, left = (self.rank + 1) % self.world, (self.rank - 1) % self.world
        ops = []
        if send.numel():
            ops.append(dist.P2POp(dist.isend, send, right))
        if recv.numel():
            ops.append(dist.P2POp(dist.irecv, recv, left))
        for request in dist.batch_isend_irecv(ops) if ops else []:
            request.wait()
        ### END SOLUTION

    def ring_all_reduce(self, flat):
        """Sum `flat` over all ranks in place; return the bytes this rank sent."""
        rank, world = self.rank, self.world
        chunks = list(flat.tensor_split(world))  # views into flat
        sent = 0
        ### BEGIN SOLUTION
        for step in range(world - 1):  # reduce-scatter
            send, recv = chunks[(rank - step) % world], chunks[(rank - step - 1) % world]
            inbox = torch.empty_like(recv)
            self.exchange(send, inbox)
            recv += inbox
            sent += nbytes(send)
        for step in range(world - 1):  # all-gather
            send, recv = chunks[(rank - step + 1) % world], chunks[(rank - step) % world]
            self.exchange(send, recv)
            sent += nbytes(send)
        ### END SOLUTION
        return sent
''',
        hidden=dict(worlds=(5,), model="odd"),
        questions=["From the table: how do bytes sent per rank grow from 2 to 4 ranks? What is the limit as n grows?",
                   "Compare with exercise 1's counts: same bytes, different number of messages. Which would you pick on a slow-latency network, and why?",
                   "Replace the exchange by a blocking `dist.send` then `dist.recv`. What does the check report?"],
    ),
    dict(
        name="ex5_ps", title="Exercise 5 · A parameter server on rank 0",
        minutes=40, points=(6, 4), file="my_ps.py", cls="MyParameterServer", method="ps",
        objectives=["write a push / step / pull parameter server with `dist.send`, `dist.recv`, `isend`, `irecv`",
                    "keep optimizer state on one rank only",
                    "see why the server's link carries (n−1)·S each way while a worker's carries S"],
        idea="""Rank 0 is the server and also trains on its share of the batch. Every step:

1. **push** (`sync_gradients`): each worker sends its flat gradient to rank 0; the server
   receives one from every worker, adds its own, divides by the world size and writes the
   average into its `.grad`s.
2. **step** (`update`): only the server calls the optimizer; workers keep no optimizer state.
3. **pull** (`sync_parameters`): the server sends the new flat parameters to every worker;
   each worker receives them and copies them into its model.

`parameters_to_vector` / `vector_to_parameters` (torch.nn.utils) flatten and restore
parameters. Count each point-to-point message with `self.wire.count(sent=..., received=...)`:
one collective per message.""",
        predict="""On 4 ranks (S = 4,128 bytes), how many bytes does the server send per step? A worker? How
does the server's figure grow with n?""",
        prediction="server_bytes_4_ranks, worker_bytes_4_ranks = None, None",
        code='''"""My parameter server: workers push gradients to rank 0, it steps, parameters come back."""
import torch
import torch.distributed as dist
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from labkit.strategies.base import Strategy, flatten, nbytes, unflatten_into

SERVER = 0


class MyParameterServer(Strategy):
    def sync_gradients(self, model):  # push: workers → server
        params = [p for p in model.parameters() if p.requires_grad]
        ### BEGIN SOLUTION
        flat = flatten([p.grad for p in params])
        if self.rank != SERVER:
            dist.send(flat, dst=SERVER)
            self.wire.count(sent=nbytes(flat))
            return
        inbox = [torch.empty_like(flat) for _ in range(1, self.world)]
        requests = [dist.irecv(buf, src=src) for src, buf in enumerate(inbox, start=1)]
        for request, buf in zip(requests, inbox):
            request.wait()
            flat += buf
            self.wire.count(received=nbytes(buf))
        unflatten_into(flat / self.world, [p.grad for p in params])
        ### END SOLUTION

    def update(self, optimizer, scaler=None):
        # Only the server takes the optimizer step.
        ### BEGIN SOLUTION
        if self.rank == SERVER:
            optimizer.step()
        ### END SOLUTION

    def sync_parameters(self, model):  # pull: server → workers
        params = [p for p in model.parameters() if p.requires_grad]
        ### BEGIN SOLUTION
        flat = parameters_to_vector(params).detach()
        if self.rank == SERVER:
            requests = [dist.isend(flat, dst=dst) for dst in range(1, self.world)]
            for request in requests:
                request.wait()
            self.wire.count(sent=nbytes(flat) * (self.world - 1), calls=self.world - 1)
        else:
            dist.recv(flat, src=SERVER)
            self.wire.count(received=nbytes(flat))
            vector_to_parameters(flat, params)
        ### END SOLUTION
''',
        hidden=dict(worlds=(3,), model="odd", steps=4),
        questions=["From the table: the server's bytes against a worker's, on 2, 3 and 4 ranks. Which link is the bottleneck?",
                   "Compare the server's bytes on 4 ranks with exercise 4's per-rank bytes.",
                   "What does the check report if the server forgets to send the parameters to the last worker?"],
    ),
    dict(
        name="ex6_ps_sharded", title="Exercise 6 · A sharded server: reduce-scatter, step the shard, all-gather",
        minutes=45, points=(6, 4), file="my_sharded.py", cls="MySharded", method="ps_sharded",
        objectives=["split the parameter server over every rank (each owns 1/n of the parameters and of the optimizer state)",
                    "use `dist.reduce_scatter_single` and `dist.all_gather_single`",
                    "pad a buffer whose length n does not divide"],
        idea="""Instead of one server, every rank owns one slice (*shard*) of the flat parameter vector and
the optimizer state for it (ZeRO stage 1's memory saving). A step is:

1. `sync_gradients`: pad the flat gradient to n·shard_len, divide by the world size and
   **reduce-scatter** it: each rank receives the sum of *its* slice, into `self.shard.grad`.
2. `update`: step this rank's own optimizer, which only knows `self.shard`.
3. `sync_parameters`: **all-gather** every rank's shard into one padded flat buffer and copy
   it into the model's parameters (`unflatten_into` ignores the padding at the end).

Reduce-scatter and all-gather each move (n−1)/n of the padded buffer per rank: count them
with `self.wire.count(sent=..., received=...)`, one collective each.""",
        predict="""How many bytes per rank per step on 4 ranks, against exercise 5's server? How much
optimizer state (momentum values) does each rank keep, against the whole model?""",
        prediction="bytes_4_ranks, momentum_values_per_rank = None, None",
        code='''"""My sharded parameter server: every rank owns 1/n of the parameters and optimizer state."""
import math

import torch
import torch.distributed as dist
from torch.nn.utils import parameters_to_vector

from labkit.strategies.base import Strategy, flatten, nbytes, unflatten_into


class MySharded(Strategy):
    def prepare(self, model, optimizer):
        self.params = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in self.params)
        self.shard_len = math.ceil(total / self.world)
        self.padded = self.shard_len * self.world
        # Make self.shard: an nn.Parameter holding a copy of this rank's slice of the padded
        # flat parameters, and self.shard_optimizer: type(optimizer)([self.shard], **optimizer.defaults).
        ### BEGIN SOLUTION
        flat = self.pad(parameters_to_vector(self.params).detach())
        mine = flat[self.rank * self.shard_len:(self.rank + 1) * self.shard_len]
        self.shard = torch.nn.Parameter(mine.clone())
        self.shard_optimizer = type(optimizer)([self.shard], **optimizer.defaults)
        ### END SOLUTION
        return model

    def pad(self, flat):
        return torch.nn.functional.pad(flat, (0, self.padded - flat.numel()))

    def sync_gradients(self, model):  # reduce-scatter: each owner gets the sum of its slice
        ### BEGIN SOLUTION
        grads = self.pad(flatten([p.grad for p in self.params])) / self.world
        self.shard.grad = torch.empty_like(self.shard)
        dist.reduce_scatter_single(self.shard.grad, grads, op=dist.ReduceOp.SUM)
        moved = (self.world - 1) / self.world * nbytes(grads)
        self.wire.count(sent=moved, received=moved)
        ### END SOLUTION

    def update(self, optimizer, scaler=None):
        ### BEGIN SOLUTION
        self.shard_optimizer.step()
        ### END SOLUTION

    def sync_parameters(self, model):  # all-gather: everyone gets every updated slice
        ### BEGIN SOLUTION
        flat = torch.empty(self.padded, dtype=self.shard.dtype)
        dist.all_gather_single(flat, self.shard.detach())
        with torch.no_grad():
            unflatten_into(flat, self.params)
        moved = (self.world - 1) / self.world * nbytes(flat)
        self.wire.count(sent=moved, received=moved)
        ### END SOLUTION
''',
        hidden=dict(worlds=(4,), model="odd"),
        questions=["From the table: bytes per rank on 2, 3 and 4 ranks, against exercise 5's server and exercise 4's ring.",
                   "The model has 516 parameters; how many padding values does each world size add? (The hidden test uses a model of 58.)",
                   "Why does every rank end with the same parameters though each stepped only its own shard?"],
    ),
]


def grader(kind: str, grade_id: str, points: int = 0) -> dict:
    """nbgrader's cell metadata: a solution to write, a graded test, or a read-only cell."""
    meta = dict(grade=kind == "tests", solution=kind == "solution", locked=kind != "solution",
                grade_id=grade_id, schema_version=3, task=False)
    if kind == "tests":
        meta["points"] = points
    return {"nbgrader": meta}


def args(hidden: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in hidden.items())


def notebook(ex: dict) -> nbformat.NotebookNode:
    n, spec = ex["name"], f'{ex["file"]}:{ex["cls"]}'
    visible, hidden = ex["points"]
    cells = [
        new_markdown_cell(f"# {ex['title']}\n\n**Time:** about {ex['minutes']} minutes · **Points:** {visible + hidden} "
                          f"({visible} for the check below, {hidden} for hidden tests run when graded)\n\n"
                          "**You will be able to**\n" + "".join(f"\n- {o}" for o in ex["objectives"])
                          + f"\n\nYou write a *strategy*: a class with the lab's contract methods "
                          f"(`labkit/strategies/base.py`), in the file `{ex['file']}`, written by the `%%writefile` "
                          "cell below so that torchrun can run it on every rank.",
                          metadata=grader("readonly", f"{n}_intro")),
        new_code_cell("# Parameters — the check's world sizes and its deadlock timeout (seconds without progress).\n"
                      "worlds = (2, 3, 4)\ntimeout_s = 10",
                      metadata={"tags": ["parameters"], **grader("readonly", f"{n}_parameters")}),
        new_code_cell(SETUP, metadata=grader("readonly", f"{n}_setup")),
        new_markdown_cell("## The idea\n\n" + ex["idea"], metadata=grader("readonly", f"{n}_idea")),
        new_markdown_cell("## Predict before you run\n\n" + ex["predict"]
                          + "\n\nWrite your numbers in the next cell *before* you run the check.",
                          metadata=grader("readonly", f"{n}_predict")),
        new_code_cell(ex["prediction"] + "  # your predictions"),
        new_markdown_cell(f"## Your strategy\n\nWrite the parts marked in `{ex['file']}`, run the cell, then run the check.",
                          metadata=grader("readonly", f"{n}_task")),
        new_code_cell(f"%%writefile {ex['file']}\n" + ex["code"], metadata=grader("solution", f"{n}_code")),
        new_markdown_cell("## The instant check\n\nReal torchrun, 2, 3 and 4 gloo ranks on the CPU, a small float64 "
                          "model, a few steps, against PyTorch's DDP from the same seed and batches. It says what "
                          "matched and, if not, where: a layer and step, your own line, or the call a rank is stuck in.",
                          metadata=grader("readonly", f"{n}_check_intro")),
        new_code_cell(f'report = labkit.check("{spec}", method="{ex["method"]}", worlds=worlds, timeout_s=timeout_s)\n'
                      "assert report.ok, report", metadata=grader("tests", f"{n}_check", visible)),
        new_markdown_cell("## What the check counted\n\nOne row per world size and rank: what your strategy counted in "
                          "its last step.", metadata=grader("readonly", f"{n}_table_intro")),
        new_code_cell("report.frame()", metadata=grader("readonly", f"{n}_table")),
        new_markdown_cell("## Questions\n\nAnswer from the table above and the check's lines.\n"
                          + "".join(f"\n{i}. {q}" for i, q in enumerate(ex["questions"], 1)),
                          metadata=grader("readonly", f"{n}_questions")),
        new_markdown_cell("_Your answers here._"),
        new_code_cell("# Hidden tests: the same check on cases you have not seen (run when your work is graded).\n"
                      "### BEGIN HIDDEN TESTS\n"
                      f'hidden = labkit.check("{spec}", method="{ex["method"]}", {args(ex["hidden"])})\n'
                      "assert hidden.ok, hidden\n"
                      "### END HIDDEN TESTS", metadata=grader("tests", f"{n}_hidden", hidden)),
    ]
    for i, cell in enumerate(cells):
        cell.id = f"{n}-{i:02d}"  # stable ids: regenerating changes only what was edited
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                                            "name": "python3"}, "language_info": {"name": "python"}})
    return nb


def main():
    for ex in EXERCISES:
        path = SOURCE / ex["name"] / f"{ex['name']}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook(ex), path)
        print(path.relative_to(SOURCE.parent))


if __name__ == "__main__":
    main()
