"""Any optimizer (issue 28, item 3): `--set optimizer=sgd|adamw` for every method.

A sharded method shards whatever optimizer the loop built, hyperparameters and state: its
local optimizer is the loop's class over its param group (as ZeroRedundancyOptimizer builds
one), so with AdamW ps_sharded, fsdp and exercises 6 and 7's solutions make DDP's AdamW
update (float64, real torchrun, 2 gloo ranks), and each rank holds 2/n of the parameters'
bytes in Adam's two moments where DDP holds 2×. A weight decay of 0.01 makes a lost
hyperparameter show: a shard optimizer built with torch's defaults would differ by ~1e-5.

CI runs the methods whose own code builds, repoints or copies an optimizer; the methods that
only call the loop's optimizer.step() run in `make test-all` (marked slow), to keep CI short.
"""

import re

import pytest
import torch

from conftest import REPO, max_param_diff, run_to
from labkit.cli import main

TIGHT = 1e-9  # float64: rounding ~1e-15, a wrong update ≥ 1e-5 here (see test_equivalence.py)
N = 2
F64 = ("augment=false", "batch_size=4", "workers=0", "dtype=float64", "lr_warmup_steps=0", "model=simple_cnn")
ADAMW = ("optimizer=adamw", "lr=1e-3", "weight_decay=0.01")
STEP_COUNT = 4  # AdamW's `step`: a float32 scalar per parameter tensor (torch's default dtype)
SOLUTIONS = REPO / "assignments" / "solutions"


@pytest.fixture(scope="module")
def ddp_adamw(tmp_path_factory):
    result, state = run_to(tmp_path_factory.mktemp("ddp") / "ddp", "ddp", N, *F64, *ADAMW, max_steps=3)
    group = state["optimizer"]["param_groups"][0]
    assert group["decoupled_weight_decay"] and group["weight_decay"] == 0.01 and group["lr"] == 1e-3
    assert all(set(s) == {"step", "exp_avg", "exp_avg_sq"} for s in state["optimizer"]["state"].values())
    return result, state


def sizes():
    from labkit.training.models import build_model

    torch.manual_seed(0)  # the worker's seed: the same initial weights
    model = build_model("simple_cnn", 10).double()
    params = list(model.parameters())
    return {name: p.detach() for name, p in model.named_parameters()}, sum(p.numel() for p in params), len(params)


def test_ddp_with_adamw_moves_the_weights_and_holds_two_moments(ddp_adamw):
    result, state = ddp_adamw
    initial, numel, tensors = sizes()
    assert max((state["model"][k] - v).abs().max().item() for k, v in initial.items()) > 1e-3  # not a no-op
    for m in result["memory"]:
        assert m["optimizer_state_bytes"] == 2 * m["params_bytes"] + STEP_COUNT * tensors == 2 * 8 * numel + 4 * tensors


# (strategy spec, name in result.json): the exact methods whose own code builds or repoints an optimizer
SHARDED = [("ps_sharded", "ps_sharded"), ("fsdp", "fsdp"),
           (f"{SOLUTIONS / 'my_sharded.py'}:MySharded", "MySharded"), (f"{SOLUTIONS / 'my_fsdp.py'}:MyFSDP", "MyFSDP")]


@pytest.fixture(scope="module")
def sharded_adamw(tmp_path_factory):
    """sharded_adamw(spec, name) → (result, checkpoint) of that method's AdamW run, made once per
    module: the comparison of exercise 7's solution with fsdp reads the same runs."""
    runs = {}

    def run(spec, name):
        if name not in runs:
            runs[name] = run_to(tmp_path_factory.mktemp(name) / name, spec, N, *F64, *ADAMW, max_steps=3,
                                strategy_name=name)
        return runs[name]

    return run


@pytest.mark.parametrize("spec,name", SHARDED, ids=[name for _, name in SHARDED])
def test_a_sharded_method_with_adamw_equals_ddp_with_adamw(spec, name, ddp_adamw, sharded_adamw):
    result, state = sharded_adamw(spec, name)
    assert max_param_diff(ddp_adamw[1], state) < TIGHT
    _, numel, tensors = sizes()
    shard = -(-numel // N) * 8  # float64 values, padded to N equal shards
    for m in result["memory"]:  # Adam's two moments split N ways
        if name in ("ps_sharded", "MySharded"):  # ZeRO-1: the full model + its shard; the moments of the shard only
            assert m["optimizer_state_bytes"] == 2 * shard + STEP_COUNT, m
        elif name in ("fsdp", "MyFSDP"):  # ZeRO-3: a step count per sharded tensor (fsdp) or layer (MyFSDP)
            steps = tensors if name == "fsdp" else tensors // 2
            assert m["optimizer_state_bytes"] == 2 * m["params_bytes"] + STEP_COUNT * steps, m
            assert m["params_bytes"] <= shard + 8 * 10  # ≈ 1/N (fsdp cuts each tensor's rows: ⌈rows/N⌉)


def test_my_fsdp_runs_what_fsdp_runs(sharded_adamw):
    """Exercise 7's solution and the lab's fsdp (torch's FSDP2) are two files; held to one method here:
    step by step the same operations with the same message bytes (on 2 ranks no parameter of
    simple_cnn pads, and both cut it into the same three units: its two convolutions and its linear
    layer), the same bytes and collectives, and the same parameters at the end."""
    (mine, my_state), (theirs, their_state) = (sharded_adamw(*SHARDED[i]) for i in (3, 1))
    _, numel, _ = sizes()
    whole = numel * 8  # float64, no padding on 2 ranks: 20,042 values, 160,336 B
    for a, b in zip(mine["steps"], theirs["steps"], strict=True):
        assert a["ops"] == b["ops"] == {"all_gather": [6, 2 * whole], "reduce_scatter": [3, whole]}, (a["ops"], b["ops"])
        assert (a["bytes_sent"], a["collectives"]) == (b["bytes_sent"], b["collectives"]), (a, b)
    assert max_param_diff(my_state, their_state) < TIGHT


def slow(*values):
    return pytest.param(*values, id=values[0], marks=pytest.mark.slow)


# The other methods: exact ones equal DDP with AdamW too; the rest (local steps, stale gradients) run and learn.
OTHERS = [slow("ssp", (), False),  # copies and restores the optimizer's state_dict
          slow("diloco", ("inner=sgd", "sync_every=1"), False), slow("localsgd", ("sync_every=1",), False),
          slow("allreduce", (), True), slow("bucketed", ("bucket_mb=0.02",), True),
          slow("overlap", ("bucket_mb=0.02",), True),
          slow("ring", (), True), slow("ps", (), True), slow("hierarchical", (), True), slow("powersgd", (), True)]


@pytest.mark.parametrize("strategy,options,exact", OTHERS)
def test_every_method_runs_with_adamw(strategy, options, exact, ddp_adamw, tmp_path):
    result, state = run_to(tmp_path / strategy, strategy, N, *F64, *ADAMW, *options, max_steps=3)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    if exact:
        assert max_param_diff(ddp_adamw[1], state) < TIGHT


@pytest.mark.slow
def test_single_with_adamw_on_the_global_batch_equals_ddp(ddp_adamw, tmp_path):
    sets = [s for s in F64 if not s.startswith("batch_size")]
    _, state = run_to(tmp_path / "single", "single", 1, *sets, "batch_size=8", *ADAMW, max_steps=3)
    assert max_param_diff(ddp_adamw[1], state) < TIGHT


def test_every_method_is_run_with_adamw():
    from labkit.strategies import REGISTRY

    covered = {"ddp", "single"} | {spec for spec, _ in SHARDED} | {p.values[0] for p in OTHERS}
    assert covered >= set(REGISTRY), set(REGISTRY) - covered


def test_an_unknown_optimizer_is_refused_in_one_line_before_launch(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--profile", "cpu", "--strategy", "ps_sharded", "--set", "optimizer=adam", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimizer='adam' is not one of sgd, adamw" in err[0], err
    assert not out.exists()


def test_no_method_builds_an_optimizer_from_its_defaults():
    """`type(optimizer)(params, **optimizer.defaults)` breaks on AdamW (decoupled_weight_decay is
    in its defaults, not in its constructor's keywords): build from the class and param groups."""
    files = [*(REPO / "labkit" / "strategies").glob("*.py"), *SOLUTIONS.glob("*.py"),
             *(REPO / "assignments" / "source").rglob("*.ipynb")]
    offenders = [f.relative_to(REPO).as_posix() for f in files
                 if re.search(r"\*\*\w*optimizer\.defaults\s*[,)]", f.read_text())]
    assert not offenders, offenders


def test_the_refusal_names_the_optimizers_the_loop_builds():
    from labkit.errors import ConfigError
    from labkit.profiles import make_config
    from labkit.training.optim import OPTIMIZERS

    for name in OPTIMIZERS:
        assert make_config("cpu", strategy="ps_sharded", optimizer=name).optimizer == name
    with pytest.raises(ConfigError) as error:
        make_config("cpu", strategy="ps_sharded", optimizer="adam")
    assert str(error.value) == f"optimizer='adam' is not one of {', '.join(OPTIMIZERS)}"
