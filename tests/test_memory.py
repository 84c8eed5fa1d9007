"""Memory per rank (result.json `memory`, labkit/training/memory.py) against analytic counts.

simple_cnn on 4 gloo ranks, SGD with momentum, float32: P = Σ numel × element_size of its
parameters. What each rank must hold at the end of a step:

    ddp         params P, grads P, momentum P on every rank (nothing sharded)
    ps_sharded  the full model and its gradients, plus its shard and the shard's gradient,
                and only the shard's momentum: ⌈numel/n⌉ × element_size (ZeRO-1)
    fsdp        each parameter's dim-0 chunk only (ZeRO-3): the ranks' shares add up to P,
                and each is P/n up to the chunking (⌈rows/n⌉ rows per rank)

The peak is measured, not counted: it must exceed what the tensors alone hold.
"""

import math

import pytest

from conftest import REPO, labkit_cli, run_to

N = 4
COMMON = ("model=simple_cnn", "augment=false", "batch_size=4", "workers=0", "lr_warmup_steps=0")
HAS_FSDP = (REPO / "labkit" / "strategies" / "fsdp.py").exists()  # another file of the lab, maybe not yet here


def model_shapes():
    from labkit.training.models import build_model

    return [(p.shape, p.element_size()) for p in build_model("simple_cnn", 10).parameters()]


P = sum(math.prod(shape) * size for shape, size in model_shapes())
NUMEL = sum(math.prod(shape) for shape, _ in model_shapes())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("memory")
    methods = ["ddp", "ps_sharded"] + (["fsdp"] if HAS_FSDP else [])
    return base, {m: run_to(base / m, m, N, *COMMON, max_steps=3)[0] for m in methods}


def memory_of(result):
    memory = result["memory"]
    assert [m["rank"] for m in memory] == list(range(N))
    for m in memory:
        assert m["step"] == 3  # the first measured step (timing_warmup_steps = 2), while gradients exist
        assert m["peak_bytes"] > m["params_bytes"] > 0 and m["peak_source"]
        # the peak is measured from the start of training; the step peak at the count, within it
        assert 0 < m["start_bytes"] <= m["step_peak_bytes"] <= m["peak_bytes"]
    return memory


def test_ddp_holds_everything_on_every_rank(runs):
    for m in memory_of(runs[1]["ddp"]):
        assert (m["params_bytes"], m["grads_bytes"], m["optimizer_state_bytes"]) == (P, P, P), m


def test_ps_sharded_holds_a_shard_of_the_momentum(runs):
    shard = math.ceil(NUMEL / N) * 4  # float32, padded to n equal shards
    for m in memory_of(runs[1]["ps_sharded"]):
        assert m["optimizer_state_bytes"] == shard, m  # ≈ P / n: ZeRO-1's saving
        assert m["params_bytes"] == P + shard and m["grads_bytes"] == P + shard, m  # the model + its shard


@pytest.mark.skipif(not HAS_FSDP, reason="labkit/strategies/fsdp.py is not in this tree yet")
def test_fsdp_holds_a_shard_of_everything(runs):
    memory = memory_of(runs[1]["fsdp"])
    # fully_shard cuts every parameter into n chunks along dim 0, ⌈rows/n⌉ rows each
    bound = sum(math.ceil(shape[0] / N) * math.prod(shape[1:]) * size for shape, size in model_shapes())
    for kind in ("params_bytes", "grads_bytes", "optimizer_state_bytes"):
        shares = [m[kind] for m in memory]
        assert sum(shares) == P, (kind, shares)  # every byte held once, by one rank
        assert all(share <= bound < P / 2 for share in shares), (kind, shares, bound)


def test_the_report_shows_the_memory_table(runs):
    from labkit.report.selection import Selection
    from labkit.report.sentences import describe, report_text

    base, results = runs
    text = report_text(Selection(kept=list(results.values())))
    assert "Memory per rank" in text
    table = text[text.index("Memory per rank"):]
    for label in results:
        assert label in table
    assert f"{P / 1e6:.4g}" in table  # ddp's parameters, in MB
    assert all(h in table for h in ("held MB", "step peak MB", "added MB", "run peak MB"))
    assert "MB of parameters" in describe(results["ddp"])
    # and `labkit compare` prints the same table, from the result files
    compare = labkit_cli("compare", *[base / m for m in results], env={"LABKIT_RESULTS": str(base / "out")})
    assert "Memory per rank" in compare.stdout and f"{P / 1e6:.4g}" in compare.stdout


def test_each_tensor_counts_once_and_a_wrong_kind_is_named():
    """In one process, no torchrun: a method listing a model parameter again does not double
    it, and a key held_tensors may not return is named in the error."""
    from types import SimpleNamespace

    import torch

    from labkit.strategies.base import Strategy
    from labkit.training.memory import MemoryMeter

    model = torch.nn.Linear(3, 2)  # 8 float32 values
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()

    class Again(Strategy):
        def held_tensors(self):
            return {"params": [model.weight], "grads": [None]}

    meter = MemoryMeter(0, torch.device("cpu"), count_at=1)
    meter.arm(1)
    meter.count(model, optimizer, Again(SimpleNamespace(options={})))
    counted = {k: v for k, v in meter.counted.items() if k != "step_peak_bytes"}
    assert counted == {"step": 1, "params_bytes": 32, "grads_bytes": 32, "optimizer_state_bytes": 32}

    class Wrong(Strategy):
        def held_tensors(self):
            return {"momentum": []}

    meter.counted = None
    meter.arm(2)
    with pytest.raises(ValueError, match="returned 'momentum'; its keys are params, grads, optimizer_state"):
        meter.count(model, optimizer, Wrong(SimpleNamespace(options={})))
