"""Write the exercise notebooks (nbgrader source versions) from prose here and code in solutions/.

    .venv/bin/python assignments/make_sources.py           # → assignments/source/<exercise>/<exercise>.ipynb
    .venv/bin/python assignments/make_sources.py --check   # exit 1 if a committed notebook differs

They share one shape, so they are stitched, never written by hand: objectives and time,
the setup, the idea (what, not how), a "predict before you run" cell, the strategy file
written with %%writefile — the instructor's solution, read from `solutions/<file>`, whose
`### BEGIN SOLUTION` / `### END SOLUTION` regions nbgrader turns into the starter's
`raise NotImplementedError()` — tiered hints the student opens on purpose, the instant check
(points), the predictions beside what the check measured, questions answered from the
check's own table (a manually graded cell, points), hidden tests (points) that run the same
check on other cases of the same kinds, and the next step: the student's file in the lab.

The solutions are real files: importable, linted and tested (tests/test_assignments.py)
like the package's strategies. Edit a solution there or the prose here, regenerate, commit
both; `--check` (run by the suite) fails when they have drifted apart.
"""

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the lab's checkout: the hints' texts come from its package
SOURCE, SOLUTIONS = HERE / "source", HERE / "solutions"
POINTS = dict(check=5, hidden=3, answers=2)  # per exercise: 10

SETUP = '''# Find the lab (installed in the lab's .venv; else the checkout above this folder).
import sys, pathlib
try:
    import labkit
except ImportError:
    here = pathlib.Path.cwd()
    sys.path.insert(0, str(next(p for p in [here, *here.parents] if (p / "labkit" / "__init__.py").exists())))
    import labkit
print("labkit from", pathlib.Path(labkit.__file__).parent)'''

# The check's model: 517 float64 parameters in 6 tensors (144, 16, 256, 16, 80, 5), S = 4,136 bytes.
# 2, 3 and 4 divide neither 517 nor, for the ring, every chunk: the visible check sees uneven lengths.
EXERCISES = [
    dict(
        name="ex1_allreduce", title="Exercise 1 · Average the gradients: one all-reduce per tensor",
        minutes=20, file="my_allreduce.py", cls="MyAllReduce", method="allreduce", builtin="allreduce",
        notebook="03_manual_allreduce",
        objectives=["say why summing gradients over ranks and dividing by the world size gives the gradient of the global batch",
                    "use `dist.all_reduce` on a tensor in place",
                    "count what an all-reduce puts on the wire: 2(n−1)/n·S bytes per rank"],
        idea="""After `loss.backward()` every rank holds the gradient of the loss on *its own* part of the
batch. The gradient of the whole (global) batch is their mean. If every rank holds that
same mean, every rank takes the same optimizer step — and, since the contract started every
rank from rank 0's parameters, every rank stays identical to PyTorch's DDP.

The lab's loop calls `sync_gradients(model)` after backward and before the optimizer step.
What you put on the wire is counted by the loop, not by you: it records every torch.distributed
call torch runs during a step and counts each by the algorithm gloo runs for it.""",
        predict="""The check's model has 517 float64 parameters in 6 tensors (S = 4,136 bytes). How many
bytes will rank 0 *send* per step on 2 ranks? On 4 ranks? How many collectives per step?""",
        prediction=("bytes_2_ranks", "bytes_4_ranks", "collectives"),
        measured=dict(bytes_2_ranks=("bytes_sent", 2, 0), bytes_4_ranks=("bytes_sent", 4, 0),
                      collectives=("collectives", 2, 0)),
        hidden=dict(worlds=(3,), model="odd"),
        questions=["How do the bytes sent per rank change from 2 to 3 to 4 ranks? Compare each with 2(n−1)/n·S.",
                   "Why is the number of collectives the same for every world size?",
                   "Delete the division by the world size and run the check: what does it say, and why that ratio? "
                   "(Put the line back.)"],
        answers="""1. 4,136 → 5,512 → 6,204 bytes: 2(n−1)/n·S with S = 4,136 (the factors 1, 4/3, 3/2; on 3 ranks each
   of the 6 counts rounds down, 2 B below 5,514.7).
2. One all-reduce per gradient tensor, and the model has 6 whatever the number of ranks.
3. "Your first update is 2.00× DDP's = the world size: the gradients look summed, not averaged": the sum of n
   gradients is n times their mean, so the step is n times too long.""",
    ),
    dict(
        name="ex2_bucketed", title="Exercise 2 · Bucketing: fewer, larger all-reduces",
        minutes=30, file="my_bucketed.py", cls="MyBucketed", method="bucketed", builtin="bucketed",
        notebook="05_advanced_allreduce",
        objectives=["explain why many small collectives cost more than a few large ones (the α in α + S·β)",
                    "flatten gradients into one buffer and copy the result back",
                    "group parameters into buckets in *reverse* order, as DDP does"],
        idea="""Every collective pays a fixed latency α before the first byte moves. ResNet-50 has 161
gradient tensors: 161 latencies. Bucketing copies the gradients into a few flat buffers of
about `bucket_mb` megabytes (1 MB = 1024·1024 bytes) and all-reduces each buffer once: the
same bytes, far fewer α. DDP fills its buckets walking the parameters **in reverse**
(backward produces the last layer's gradient first), closing a bucket once it holds at least
`bucket_mb` MB. The check runs with tiny buckets (`bucket_mb=0.001`, about 1 kB) so that
the small model gets several.""",
        predict="""The check's model has 6 gradient tensors of 144, 16, 256, 16, 80 and 5 float64 values. With
`bucket_mb=0.001` (1,048.6 bytes), how many buckets will you make? How many bytes does rank 0
send per step on 4 ranks — more or fewer than in exercise 1?""",
        prediction=("buckets", "bytes_4_ranks"),
        measured=dict(buckets=("collectives", 2, 0), bytes_4_ranks=("bytes_sent", 4, 0)),
        hidden=dict(worlds=(3,), model="deep", options={"bucket_mb": 0.0002}),
        questions=["How many collectives per step did the check count? Is it the number you predicted, and why?",
                   "Are the bytes per rank different from exercise 1's at the same world size? Why (not)?",
                   "What is the smallest `bucket_mb` that gives one single bucket for this model? What is lost with "
                   "one bucket? (→ exercise 3)"],
        answers="""1. 2: walking backwards, 5 + 80 + 16 + 256 values (2,856 B) close the first bucket, 16 + 144 (1,280 B) the second.
2. The same (6,204 B on 4 ranks; 5,514 against 5,512 on 3, two counts rounding instead of six): the same
   values are reduced, in fewer, larger messages.
3. S = 4,136 B ≈ 0.0039 MB (anything smaller closes a bucket before the last tensor). With one bucket
   nothing can start before all of backward is done: no overlap is possible.""",
    ),
    dict(
        name="ex3_overlap", title="Exercise 3 · Overlap communication with backward through gradient hooks",
        minutes=40, file="my_overlap.py", cls="MyOverlap", method="overlap", builtin="overlap",
        notebook="05_advanced_allreduce",
        objectives=["use autograd's per-parameter hook `register_post_accumulate_grad_hook`",
                    "launch an asynchronous all-reduce (`async_op=True`) and wait for its handle later",
                    "explain why every rank launches the same buckets in the same order"],
        idea="""Backward computes gradients from the last layer to the first. As soon as *every* gradient
of a bucket has arrived, its all-reduce can start — while backward goes on computing the
earlier layers. That is DDP's central trick. The loop's three calls after backward are
`sync_gradients`, `update` (the optimizer step) and `sync_parameters`; here the first has
only to wait for what backward already started. The buckets are given (`make_buckets`, the
lab's version of exercise 2).""",
        predict="""With the same buckets as exercise 2, will the bytes and collectives per step differ from
exercise 2's? Write the collectives per step on 2 ranks and the bytes rank 0 sends on 4.""",
        prediction=("collectives", "bytes_4_ranks"),
        measured=dict(collectives=("collectives", 2, 0), bytes_4_ranks=("bytes_sent", 4, 0)),
        hidden=dict(worlds=(4,), model="odd", options={"bucket_mb": 0.0001}),  # 2 buckets
        questions=["Compare the counts with exercise 2's: what changed, what did not?",
                   "Forget to reset the arrival counts at the end of `sync_gradients` and run the check: what does it "
                   "report, at which step, and why not at step 1?",
                   "Why must every rank build its buckets in the same order? What would a rank with another order do "
                   "to the collectives?"],
        answers="""1. Nothing: 2 collectives and the same bytes; only *when* they start changed (during backward).
2. The counts keep growing, no bucket is complete again, nothing is launched in step 2: the parameters differ
   from DDP after step 2 (step 1 was right).
3. Collectives pair up by order: a rank reducing another bucket at the same position would sum unrelated
   gradients (or sizes would not match, or it would hang).""",
    ),
    dict(
        name="ex4_ring", title="Exercise 4 · Ring all-reduce from send and receive",
        minutes=60, file="my_ring.py", cls="MyRing", method="ring", builtin="ring",
        notebook="05_advanced_allreduce",
        objectives=["build an all-reduce from point-to-point messages: reduce-scatter, then all-gather",
                    "exchange with both neighbours at once so no rank waits on a rank that waits (no deadlock)",
                    "show that each rank sends 2(n−1)/n·S bytes, whatever n is"],
        idea="""Cut the flat gradient buffer into n chunks. Ranks form a ring: rank r sends to r+1 and
receives from r−1. The primer (00b, section 7) drew the two phases: in the **reduce-scatter**
every rank sends one chunk a step and *adds* the chunk it receives, until after n−1 steps
each rank holds the full sum of one chunk; in the **all-gather** every rank passes on the
finished sums, copying what arrives, until after n−1 more steps every rank holds them all.

The check's buffer has 517 values: on 2, 3 and 4 ranks the chunks differ in length
(`flat.tensor_split(n)`), and a buffer shorter than n would have empty ones.""",
        predict="""With S = 4,136 bytes, about how many bytes does each rank send per training step (one sync
of the gradients; the primer's ring *steps* are the n−1 exchanges inside each phase) on 2 ranks?
On 4? How many point-to-point exchanges (messages) per sync on 4 ranks?""",
        prediction=("bytes_2_ranks", "bytes_4_ranks", "messages_4_ranks"),
        measured=dict(bytes_2_ranks=("bytes_sent", 2, 0), bytes_4_ranks=("bytes_sent", 4, 0),
                      messages_4_ranks=("collectives", 4, 0)),
        hidden=dict(worlds=(5,), model="odd"),
        questions=["From the table: how do the bytes sent per rank grow from 2 to 3 to 4 ranks? What is the limit as n "
                   "grows? Why do ranks of the same world size differ by a few bytes?",
                   "From the table, the ring's messages per sync on 2, 3 and 4 ranks. Exercise 1 runs 6 all-reduces per "
                   "step, and in the primer's α–β model each all-reduce is itself a ring of 2(n−1) messages: how many "
                   "latencies α does each method pay per step? Which would you pick on a network where each message "
                   "pays a long latency, and why does exercise 2 help exercise 1 the same way?",
                   "Replace the exchange by a blocking `dist.send` then `dist.recv`. What does the check report?"],
        answers="""1. 4,136 → 5,520 → 6,208 B on rank 0: 2(n−1)/n·S, which tends to 2·S. Chunks differ by one value
   (517 = 173 + 172 + 172 on 3 ranks), so a rank that sends the longer chunk more often counts 8 B more
   (rank 1 on 3 ranks: 5,512).
2. The ring: 2(n−1) messages, 2, 4, 6 on 2, 3, 4 ranks, so 2(n−1)·α a step; exercise 1: 6 × 2(n−1) = 12, 24,
   36 messages, six times as many latencies for the same bytes. With a long latency per message the
   ring over one flat buffer wins at every n; bucketing (exercise 2) wins the same way, by fewer, larger
   all-reduces.
3. gloo buffers small messages, so it may pass; with larger chunks (or NCCL) every rank blocks in send:
   "deadlock: no rank made progress", each rank stuck at its dist.send line.""",
    ),
    dict(
        name="ex5_ps", title="Exercise 5 · A parameter server on rank 0",
        minutes=40, file="my_ps.py", cls="MyParameterServer", method="ps", builtin="ps",
        notebook="04_parameter_server",
        objectives=["write a push / step / pull parameter server with `dist.send`, `dist.recv`, `isend`, `irecv`",
                    "keep optimizer state on one rank only",
                    "see why the server's link carries (n−1)·S each way while a worker's carries S"],
        idea="""Rank 0 is the server and also trains on its share of the batch. Every step:

1. **push** (`sync_gradients`): the server ends up holding the average of every rank's
   gradients, in its own `.grad`s;
2. **step** (`update`): only the server calls the optimizer; workers keep no optimizer state;
3. **pull** (`sync_parameters`): every worker ends up with the server's new parameters.

The loop counts every message you send or receive (no counting line in your file): one per
`dist.send`/`dist.isend`, one per receive. The refusal at the top of the file is given, as in the
lab's `ps`: a server needs a worker, and amp=fp16's loss scale would live on the server alone.""",
        predict="""On 4 ranks (S = 4,136 bytes), how many bytes does the server send per step? A worker? How
does the server's figure grow with n?""",
        prediction=("server_bytes_4_ranks", "worker_bytes_4_ranks"),
        measured=dict(server_bytes_4_ranks=("bytes_sent", 4, 0), worker_bytes_4_ranks=("bytes_sent", 4, 1)),
        hidden=dict(worlds=(3,), model="odd", steps=4),
        questions=["From the table: the server's bytes against a worker's, on 2, 3 and 4 ranks. Which link is the "
                   "bottleneck?",
                   "Compare the server's bytes on 4 ranks with exercise 4's per-rank bytes on 4 ranks.",
                   "Make the server skip the last worker in the pull and run the check: what does it report?"],
        answers="""1. Server (n−1)·S: 4,136 / 8,272 / 12,408 B; a worker S = 4,136 B whatever n: the server's link.
2. 12,408 B against 6,208 B: twice as much on 4 ranks, and the gap grows with n.
3. A deadlock: the last worker is stuck in sync_parameters at its dist.recv line.""",
    ),
    dict(
        name="ex6_ps_sharded", title="Exercise 6 · A sharded server: reduce-scatter, step the shard, all-gather",
        minutes=45, file="my_sharded.py", cls="MySharded", method="ps_sharded", builtin="ps_sharded",
        notebook="05_advanced_allreduce",
        objectives=["split the parameter server over every rank (each owns 1/n of the parameters and of the optimizer state)",
                    "use `dist.reduce_scatter_single` and `dist.all_gather_single`",
                    "pad a buffer whose length n does not divide"],
        idea="""Instead of one server, every rank owns one slice (*shard*) of the flat parameter vector and
the optimizer state for it (ZeRO stage 1's memory saving). A step: each rank receives the
average of *its* slice of the gradients (`sync_gradients`), steps its own slice (`update`),
and every rank gets every updated slice back into its model (`sync_parameters`).

The collectives that do this need every slice to be the same length: the check's 517
values do not divide by 2, 3 or 4, so the flat buffers are padded at the end to n·shard_len.

The end of the file is given, as in the lab's `ps_sharded`: what a checkpoint keeps of each rank's
shard optimizer (a resumed run keeps its momentum), the tensors the lab's memory count sees, and
the refusal of amp=fp16 (each rank's loss scaler would see only its own shard).""",
        predict="""How many bytes per rank per step on 4 ranks, against exercise 5's server? How many momentum
values does each rank keep on 4 ranks, against the whole model's 517?""",
        prediction=("bytes_4_ranks", "momentum_values_per_rank"),
        measured=dict(bytes_4_ranks=("bytes_sent", 4, 0)),
        hidden=dict(worlds=(4,), model="odd"),
        questions=["From the table: bytes per rank on 2, 3 and 4 ranks, against exercise 5's server and exercise 4's "
                   "ring.",
                   "The model has 517 parameters: how many padding values does each world size (2, 3, 4) add? Find them "
                   "in the table: how many bytes more than 3(n−1)/n·S does rank 0 count?",
                   "Why does every rank end with the same parameters though each stepped only its own shard?"],
        answers="""1. 6,216 / 8,304 / 9,360 B: 3(n−1)/n·S (plus padding) — on gloo a reduce-scatter is a whole
   all-reduce, 2(n−1)/n·S, then the all-gather's (n−1)/n·S (NCCL's ring reduce-scatter would make it the
   ring's 2(n−1)/n·S) — against the server's (n−1)·S (4,136 / 8,272 / 12,408 B).
2. 1, 2 and 3 values (518, 519, 520): 3(n−1)/n × 8 B each: 12 B more on 2 ranks, 32 B on 3, 54 B on 4.
3. The all-gather gives every rank every updated shard; the shards' optimizers together are exactly one
   optimizer over all parameters (SGD with momentum, and AdamW, work value by value).""",
    ),
    dict(
        name="ex7_fsdp", title="Exercise 7 · FSDP by hand: shard every layer, gather it to compute, reduce-scatter its gradients",
        minutes=60, file="my_fsdp.py", cls="MyFSDP", method="fsdp", builtin="fsdp",
        notebook="05b_communicate_less", section="FSDP section",
        objectives=["keep only a 1/n shard of each layer's parameters on a rank between uses, and give the rest "
                    "of the memory back",
                    "all-gather a layer whole just before its forward and again just before its backward, from hooks",
                    "reduce-scatter a layer's gradients inside backward, so each rank keeps its shard's average, "
                    "and step the shards only",
                    "count what ZeRO-3 puts on the wire: two all-gathers and a reduce-scatter, four ring passes "
                    "on gloo (three on NCCL) where DDP moves two"],
        idea="""DDP keeps the whole model, its gradients and its optimizer state on every rank; exercise 6
split the optimizer state n ways (ZeRO stage 1). **FSDP** — ZeRO stage 3 (Rajbhandari et al.,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020), PyTorch's
`fully_shard` (FSDP2) — splits the parameters and the gradients too: between uses a rank keeps
only its 1/n *shard* of each layer. A layer is whole only while it computes:

1. **before its forward**: all-gather every rank's shard of the layer into its full buffer; free
   the buffer again after the forward;
2. **before its backward**: all-gather it once more (autograd saved the weights it needs, and
   they were freed);
3. **once the layer's gradients have arrived** (inside backward): reduce-scatter them, so each
   rank keeps the average of its own slice as its shard's `.grad`; free the full gradients and
   the full parameters;
4. **update**: an optimizer that knows only the shards (given), so the momentum is sharded too.

The given code lays each layer's parameters out as views of one flat buffer `self.full[i]`,
padded so that n divides it (the check's layers hold 160, 272 and 85 values: on 2 ranks 85 pads
to 86; on 3 all three pad, to 162, 273 and 87; on 4 85 pads to 88), and gives two helpers: `free(t)` gives a tensor's memory back (its storage resized
to 0 bytes, as FSDP2 does) while its shape, its views and what autograd saved of them stay;
`allocate(t)` takes the memory again before a gather writes into it.

On this torch the collectives are `dist.all_gather_single` and `dist.reduce_scatter_single`
(the older names `all_gather_into_tensor` and `reduce_scatter_tensor` still run but warn that
they are deprecated); gloo runs both on the CPU, so no all-reduce-then-slice is needed. The
check compares your parameters with DDP's (gathered whole by the given `whole_model`), and
weighs what a rank holds: when each layer's forward starts, no layer whose forward is done may
still be whole; between steps, the model may hold no more than one shard's bytes.

**Optional, once the check passes: a gather dtype.** FSDP2's `MixedPrecisionPolicy(param_dtype=
torch.bfloat16)` gathers every layer in bf16 while the shards and the optimizer stay fp32 (the
master weights). Make `gather` do the same when `self.gather_dtype(full)` (given) is not `full`'s
dtype: gather `shard.to(dtype)` into a buffer of that dtype, copy it into `full` (the loop counts the
bytes at the dtype on the wire). The check runs without it (its float64 run must match DDP exactly);
run your file in the lab with `--set param_dtype=bf16` beside `fsdp` with the same setting: the
all-gathers' bytes halve, the loss moves by about a thousandth (docs/EXPERIMENT_GUIDE.md, fsdp).""",
        predict="""The check's MLP has three layers of 160, 272 and 85 float64 values (S = 4,136 bytes). How many
collectives per step? How many bytes does rank 0 send per step on 2 ranks, and on 4 — against
exercise 6's 6,216 and 9,360?""",
        prediction=("collectives", "bytes_2_ranks", "bytes_4_ranks"),
        measured=dict(collectives=("collectives", 2, 0), bytes_2_ranks=("bytes_sent", 2, 0),
                      bytes_4_ranks=("bytes_sent", 4, 0)),
        hidden=dict(worlds=(3,), model="deep"),  # 5 layers (80, 72, 72, 72, 45 values), each padded on 3 ranks
        questions=["From the table: the bytes per rank on 2, 3 and 4 ranks against exercise 6's (6,216 / 8,304 / "
                   "9,360 B). What is the ratio, and which collective is each part of it? Why is the ratio not "
                   "exact on 3 ranks?",
                   "FSDP2's `reshard_after_forward=False` keeps each layer whole from its forward to its backward. "
                   "What would rank 0 then send per step on 4 ranks, and what does it cost in memory?",
                   "In `on_grad_ready`, replace the reduce-scatter by taking your own slice: "
                   "`shard.grad.copy_(grads.chunk(self.world)[self.rank])`. What does the check report, and why do "
                   "all ranks still agree with each other? (Put the line back.)"],
        answers="""1. 8,288 / 11,136 / 12,480 B: 4·(n−1)/n of the padded layers, 4/3 of exercise 6 — an all-gather
   before the forward, one before the backward (one ring pass each) and the reduce-scatter (on gloo a whole
   all-reduce: two passes), where exercise 6 runs one reduce-scatter and one all-gather; 9 collectives (3 per
   layer) whatever n. Each layer pads on its own here (522 values on 3 ranks against exercise 6's 519), so on
   3 ranks it is 11,136 B, not 4/3 × 8,304 = 11,072 B.
2. Three passes instead of four: 9,360 B on 4 ranks, exercise 6's figure; but every layer stays whole from its
   forward to its backward, so at the peak a rank holds all the parameters, as DDP does.
3. "parameters differ from DDP after step 1 … moved by one rank's own gradient, not the average over the
   ranks: a gradient was left local": each rank stepped its shard with its own gradient ÷ n; the all-gathers
   then hand every rank the same shards, so the ranks agree with each other, not with DDP.""",
    ),
]


def grader(kind: str, grade_id: str, points: int = 0) -> dict:
    """nbgrader's cell metadata: code to write, a graded test, a written answer graded by hand, or read-only."""
    meta = dict(grade=kind in ("tests", "answer"), solution=kind in ("solution", "answer"),
                locked=kind not in ("solution", "answer"), grade_id=grade_id, schema_version=3, task=False)
    if kind in ("tests", "answer"):
        meta["points"] = points
    return {"nbgrader": meta}


def args(hidden: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in hidden.items())


def solution(ex: dict) -> str:
    """The strategy file, solution regions included (nbgrader removes them from the release)."""
    return (SOLUTIONS / ex["file"]).read_text()


def hints(ex: dict) -> str:
    """How to open the hints: a call, never their text (labkit/notebook/hints.py holds it; a folded
    <details> block is plain text in the .ipynb, to an editor or `nbconvert --to script`)."""
    from labkit.notebook.hints import HINTS

    short, count = ex["name"].split("_", 1)[0], len(HINTS[ex["name"]])
    return (f"\n\n**Hints** ({count}, from a nudge to nearly the answer): run `labkit.hint(\"{short}\", 1)` in a new "
            f"cell; hint 2 opens after hint 1, and so on. Which hints you opened is noted in `hints_opened.json` "
            "beside this notebook, for your instructor; it costs no points.")


def notebook(ex: dict) -> nbformat.NotebookNode:
    n, spec, number = ex["name"], f'{ex["file"]}:{ex["cls"]}', ex["name"][2]
    names = ", ".join(ex["prediction"])
    cells = [
        new_markdown_cell(f"# {ex['title']}\n\n**Time:** about {ex['minutes']} minutes · **Points:** {sum(POINTS.values())} "
                          f"({POINTS['check']} for the check below, {POINTS['hidden']} for hidden tests run when graded, "
                          f"{POINTS['answers']} for your written answers)\n\n"
                          "**You will be able to**\n" + "".join(f"\n- {o}" for o in ex["objectives"])
                          + f"\n\nYou write a *strategy*: a class with the lab's contract methods "
                          f"(`labkit/strategies/base.py`), in the file `{ex['file']}`, written by the `%%writefile` "
                          "cell below so that torchrun can run it on every rank.\n\n"
                          f"**Before:** the collectives primer (`notebooks/00b_collectives_primer.ipynb`). "
                          f"**After:** `notebooks/{ex['notebook']}.ipynb` shows the lab's own `{ex['builtin']}` in its "
                          f"{ex.get('section', f'section marked *after exercise {number}*')} — open it once your check passes.",
                          metadata=grader("readonly", f"{n}_intro")),
        new_code_cell("# Parameters — the check's world sizes and its deadlock timeout (seconds without progress).\n"
                      "worlds = (2, 3, 4)\ntimeout_s = 10",
                      metadata={"tags": ["parameters"], **grader("readonly", f"{n}_parameters")}),
        new_code_cell(SETUP, metadata=grader("readonly", f"{n}_setup")),
        new_markdown_cell("## The idea\n\n" + ex["idea"], metadata=grader("readonly", f"{n}_idea")),
        new_markdown_cell("## Predict before you run\n\n" + ex["predict"]
                          + "\n\nWrite your numbers in the next cell *before* you run the check; after it they are set "
                            "beside what it measured.", metadata=grader("readonly", f"{n}_predict")),
        new_code_cell(f"{names} = {', '.join(['None'] * len(ex['prediction']))}  # your predictions"),
        new_markdown_cell(f"## Your strategy\n\nReplace each `raise NotImplementedError()` in `{ex['file']}` with your "
                          "code, run the cell, then run the check. Each docstring says what the part must achieve; "
                          "the idea above says why." + hints(ex), metadata=grader("readonly", f"{n}_task")),
        new_code_cell(f"%%writefile {ex['file']}\n" + solution(ex), metadata=grader("solution", f"{n}_code")),
        new_markdown_cell("## The instant check\n\nReal torchrun, 2, 3 and 4 gloo ranks on the CPU, a small float64 "
                          "model of 517 parameters (no world size divides it), every rank seeded differently, a few "
                          "steps, against PyTorch's DDP fed the same batches"
                          + ("; then a model of 2 values on 4 ranks, a buffer shorter than the world size, so some "
                             "chunks are empty" if ex["method"] in ("ring", "ps_sharded", "fsdp") else "")
                          + ". It says what matched and, if not, where: "
                          "a layer and step, your own line, or the call a rank is stuck in.",
                          metadata=grader("readonly", f"{n}_check_intro")),
        new_code_cell(f'report = labkit.check("{spec}", method="{ex["method"]}", worlds=worlds, timeout_s=timeout_s)\n'
                      "assert report.ok, report", metadata=grader("tests", f"{n}_check", POINTS["check"])),
        new_markdown_cell("## What the check counted, and what you predicted\n\nOne row per world size and rank: what "
                          "the loop counted of your strategy's last step, from the calls torch ran (the initial "
                          "broadcast of rank 0's state is setup, not a step: it is not in these counts). Then your predictions beside the measured figures.",
                          metadata=grader("readonly", f"{n}_table_intro")),
        new_code_cell("from labkit.assignments.check import side_by_side\n\n"
                      "display(report.frame())\n"
                      f"side_by_side(report, dict({', '.join(f'{k}={k}' for k in ex['prediction'])}),\n"
                      f"             {ex['measured']!r})",
                      metadata=grader("readonly", f"{n}_table")),
        new_markdown_cell("## Questions\n\nAnswer from the table above and the check's lines, in the cell below "
                          f"({POINTS['answers']} points, graded by hand).\n"
                          + "".join(f"\n{i}. {q}" for i, q in enumerate(ex["questions"], 1)),
                          metadata=grader("readonly", f"{n}_questions")),
        new_markdown_cell(ex["answers"], metadata=grader("answer", f"{n}_answers", POINTS["answers"])),
        new_code_cell("# Hidden tests: the same check on other cases of the same kinds (run when your work is graded).\n"
                      "### BEGIN HIDDEN TESTS\n"
                      f'hidden = labkit.check("{spec}", method="{ex["method"]}", {args(ex["hidden"])})\n'
                      "assert hidden.ok, hidden\n"
                      "### END HIDDEN TESTS", metadata=grader("tests", f"{n}_hidden", POINTS["hidden"])),
        new_markdown_cell(f"## Next: your method in the lab\n\nThe check trains a toy model. Run your file as a real "
                          f"method, on the lab's model and data, beside the built-in `{ex['builtin']}`: the next cell "
                          "prints the commands (from the lab's checkout). `labkit compare` and notebook 06 then show "
                          f"your `{ex['cls']}` as its own row, next to `{ex['builtin']}` and `ddp`.",
                          metadata=grader("readonly", f"{n}_next_intro")),
        new_code_cell(f'mine = f"{{pathlib.Path(\'{ex["file"]}\').resolve()}}:{ex["cls"]}"\n'
                      'print(f".venv/bin/labkit run --strategy {mine} --profile cpu --nproc 4 --max-steps 8")\n'
                      f'print(f".venv/bin/labkit sweep --strategy ddp,{ex["builtin"]},{{mine}} --repeats 2")\n'
                      f'print(f\'.venv/bin/papermill notebooks/06_compare.ipynb results/notebooks/06_compare.ipynb '
                      f'-p methods "ddp,{ex["builtin"]},{{mine}}"\')',
                      metadata=grader("readonly", f"{n}_next")),
    ]
    for i, cell in enumerate(cells):
        cell.id = f"{n}-{i:02d}"  # stable ids: regenerating changes only what was edited
    return new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                                              "name": "python3"}, "language_info": {"name": "python"}})


def path_of(ex: dict, source: Path = SOURCE) -> Path:
    return source / ex["name"] / f"{ex['name']}.ipynb"


def differences(source: Path = SOURCE) -> list[str]:
    """The exercises whose committed notebook is not what this file generates."""
    stale = []
    for ex in EXERCISES:
        path = path_of(ex, source)
        if not path.exists() or path.read_text() != nbformat.writes(notebook(ex)) + "\n":
            stale.append(str(path))
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed notebook differs from the generated one")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the course's source folder (default: %(default)s)")
    options = parser.parse_args(argv)
    if options.check:
        stale = differences(options.source)
        for path in stale:
            print(f"{path}: differs from what make_sources.py generates; run .venv/bin/python assignments/make_sources.py")
        return 1 if stale else 0
    for ex in EXERCISES:
        path = path_of(ex, options.source)
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook(ex), path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
