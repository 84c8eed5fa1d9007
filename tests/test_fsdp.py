"""fsdp (FSDP2's fully_shard, ZeRO-3) under real torchrun on gloo CPU ranks: the same update
as DDP in float64, the bytes it counts are the bytes torch ran and the analytic count,
validation with unequal val shards, checkpoints of full tensors, resume, accumulation."""

import json
import math

import pytest

from conftest import REPO, max_param_diff, run_to

TIGHT = 1e-9  # float64: rounding ~1e-15, a wrong update ≥ 1e-4 (see test_equivalence.py)
COMMON = ("augment=false", "batch_size=4", "workers=0", "dtype=float64", "lr_warmup_steps=0")
SIMPLE = (*COMMON, "model=simple_cnn")
TRACED = str(REPO / "tests" / "fsdp_traced.py") + ":TracedFSDP"


def warnings_in_logs(folder) -> list[str]:
    """Deprecation and FutureWarnings any rank wrote (torch names its deprecated APIs so)."""
    return [f"{log}: {line}" for log in sorted(folder.rglob("*.log")) for line in log.read_text().splitlines()
            if "FutureWarning" in line or "DeprecationWarning" in line]


def unit_bytes(model_state: dict, world: int) -> dict:
    """Each unit's gathered bytes, from the checkpoint's full parameters: a unit is a child of
    the root (the first part of a name); every parameter padded to `world` equal dim-0 chunks."""
    units = {}
    for name, tensor in model_state.items():
        if "running" in name or "num_batches" in name:  # BatchNorm buffers: not sharded, not sent
            continue
        rows = math.ceil(tensor.shape[0] / world) * world
        units[name.split(".")[0]] = units.get(name.split(".")[0], 0) + \
            rows * tensor[0].numel() * tensor.element_size()
    return units


def expected_step(model_state, world, reshard: bool) -> dict:
    units = unit_bytes(model_state, world)
    gathers = 2 if reshard else 1  # forward, and again in backward when freed after forward
    total = sum(units.values())
    ring = (world - 1) / world
    return {"ops": {"all_gather": [gathers * len(units), gathers * total], "reduce_scatter": [len(units), total]},
            # gloo: a reduce-scatter is a whole all-reduce (two ring passes), an all-gather one pass
            "bytes_sent": (gathers + 2) * ring * total}


@pytest.fixture(scope="module")
def ddp4(tmp_path_factory):
    return run_to(tmp_path_factory.mktemp("ddp") / "ddp4", "ddp", 4, *SIMPLE, max_steps=4)


@pytest.mark.parametrize("reshard", [True, False], ids=["reshard", "no-reshard"])
def test_fsdp_matches_ddp_and_counts_what_torch_ran(reshard, ddp4, tmp_path):
    """simple_cnn on 4 ranks: fc's 10 rows split 3+3+3+1, so padding is in every step. The
    traced subclass records the all-gathers and reduce-scatters FSDP2 really issued."""
    result, state = run_to(tmp_path / "fsdp", TRACED, 4, *SIMPLE, f"reshard_after_forward={str(reshard).lower()}",
                           max_steps=4, strategy_name="TracedFSDP")
    assert result["method"] == "TracedFSDP" + ("" if reshard else " no-reshard")  # its label in comparisons
    assert max_param_diff(ddp4[1], state) < TIGHT
    assert max_param_diff(ddp4[1], state, include_buffers=True) < TIGHT
    expected = expected_step(state["model"], 4, reshard)
    traced = [json.loads(line) for line in (tmp_path / "fsdp" / "traced-0.jsonl").read_text().splitlines()]
    assert len(traced) == 4
    for step, ran in zip(result["steps"], traced):
        assert step["ops"] == ran == expected["ops"], (step["ops"], ran, expected["ops"])
        assert step["bytes_sent"] == pytest.approx(expected["bytes_sent"], abs=8)  # int() per count
    # the optimizer state is kept whole in the checkpoint too (gathered from the shards)
    momentum = state["optimizer"]["state"]
    assert [m["momentum_buffer"].shape for m in momentum.values()] == [t.shape for t in state["model"].values()]
    assert not warnings_in_logs(tmp_path), warnings_in_logs(tmp_path)


def test_fsdp_matches_ddp_with_batchnorm(tmp_path):
    """resnet18_small (BatchNorm; its running statistics are buffers, not sharded)."""
    sets = (*COMMON, "model=resnet18_small")
    _, ddp = run_to(tmp_path / "ddp", "ddp", 4, *sets, max_steps=3)
    result, fsdp = run_to(tmp_path / "fsdp", "fsdp", 4, *sets, max_steps=3)
    assert max_param_diff(ddp, fsdp) < TIGHT
    assert result["steps"][-1]["bytes_sent"] == pytest.approx(expected_step(fsdp["model"], 4, True)["bytes_sent"], abs=32)
    assert not warnings_in_logs(tmp_path), warnings_in_logs(tmp_path)


def test_validation_with_unequal_val_shards_completes_and_agrees_with_ddp(tmp_path):
    """7 ranks split the tiny set's 300 val images 43 × 6 + 42: at batch 3 rank 6 has 14
    batches and the others 15. A sharded forward all-gathers, so one forward too many would
    hang; fsdp gathers once before validating. 7 ranks also leave fc's 10 rows (2 per rank)
    empty on two ranks. Validation on the same weights gives DDP's figures."""
    sets = (*COMMON, "model=simple_cnn", "batch_size=3")
    ddp_result, ddp = run_to(tmp_path / "ddp", "ddp", 7, *sets, max_steps=2)
    result, fsdp = run_to(tmp_path / "fsdp", "fsdp", 7, *sets, max_steps=2)
    assert max_param_diff(ddp, fsdp) < TIGHT
    ours, theirs = result["epochs"][-1], ddp_result["epochs"][-1]
    assert ours["val_top1"] == theirs["val_top1"] and ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-9)


def test_fsdp_resumes_every_ranks_shard_after_a_restart(tmp_path):
    """The checkpoint holds full tensors (model, and AdamW's two moments: any optimizer's state);
    a restarted rank cuts its shard from them again, and the run ends where the uninterrupted one ends."""
    adamw = (*SIMPLE, "optimizer=adamw", "lr=1e-3", "weight_decay=0.01")
    _, straight = run_to(tmp_path / "straight", "fsdp", 4, *adamw, max_steps=6)
    assert {"exp_avg", "exp_avg_sq"} <= set(straight["optimizer"]["state"][0])
    sets = [*adamw, "checkpoint_every=3", "fault=1:5:kill", "max_restarts=1"]
    result, restarted = run_to(tmp_path / "restarted", "fsdp", 4, *sets, max_steps=6)
    assert len(result["steps"]) == 6
    assert max_param_diff(straight, restarted) < TIGHT


def test_fsdp_accumulation_equals_ddp_accumulation(tmp_path):
    """accumulate=2: FSDP2's set_requires_gradient_sync(False) on the first micro-batch; one
    reduce-scatter per unit a step, and the unit all-gathered twice per micro-batch. With an
    lr warm-up: the loop's schedule reaches the optimizer fsdp repointed to the shards."""
    sets = (*(s for s in SIMPLE if not s.startswith("lr_warmup_steps")), "lr_warmup_steps=3", "accumulate=2")
    _, ddp = run_to(tmp_path / "ddp", "ddp", 4, *sets, max_steps=3)
    result, fsdp = run_to(tmp_path / "fsdp", TRACED, 4, *sets, max_steps=3, strategy_name="TracedFSDP")
    assert max_param_diff(ddp, fsdp) < TIGHT
    units = len(unit_bytes(fsdp["model"], 4))
    traced = [json.loads(line) for line in (tmp_path / "fsdp" / "traced-0.jsonl").read_text().splitlines()]
    for step, ran in zip(result["steps"], traced, strict=True):
        assert step["ops"] == ran and {op: calls for op, (calls, _) in ran.items()} == \
            {"all_gather": 4 * units, "reduce_scatter": units}


def test_fsdp_refuses_fp16_in_one_line():
    from labkit.errors import ConfigError
    from labkit.profiles import make_config

    with pytest.raises(ConfigError, match="fsdp does not support amp=fp16") as error:
        make_config("cpu", strategy="fsdp", amp="fp16")
    assert "\n" not in str(error.value)
