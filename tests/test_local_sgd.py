"""Local SGD and DiLoCo (issue 23, item 2): synchronize every H steps instead of every step.

With H = 1 both are DDP's update, exactly (float64, real torchrun, 4 gloo ranks): averaging
the parameters after every rank's own SGD step is averaging the steps, and SGD's momentum is
linear in the gradients, so the mean of the ranks' momenta is DDP's momentum. DiLoCo needs
its outer optimizer to be the plain average for this (outer_lr=1, outer_momentum=0). With
H = 4 they still learn, and put a quarter of the bytes on the wire. A restart between two
syncs brings back every rank's own model, inner state and the outer momentum."""

import pytest

from conftest import max_param_diff, run_to
from labkit.cli import main

TIGHT = 1e-9  # float64: rounding is ~1e-15, a wrong update ≥ 1e-4 (tests/test_equivalence.py)
COMMON = ("augment=false", "batch_size=4", "workers=0", "dtype=float64", "lr_warmup_steps=0", "model=simple_cnn")
# tests/test_equivalence.py's LEARNING: simple_cnn at lr 0.2 learns within a few steps (float32)
LEARNING = ("augment=false", "workers=0", "model=simple_cnn", "lr=0.2", "batch_size=16", "lr_warmup_steps=0")


@pytest.fixture(scope="module")
def ddp_ref(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    ddp = run_to(base / "ddp", "ddp", 4, *COMMON, max_steps=4)
    _, frozen = run_to(base / "frozen", "ddp", 4, *COMMON, "lr=1e-12", max_steps=1)
    assert max_param_diff(ddp[1], frozen) > 1e-3  # the weights really moved: no equivalence of no-ops
    return ddp


EVERY_STEP = [("localsgd", ("sync_every=1",)),
              ("diloco", ("sync_every=1", "inner=sgd", "outer_lr=1", "outer_momentum=0"))]


@pytest.mark.parametrize("strategy,options", EVERY_STEP, ids=[s for s, _ in EVERY_STEP])
def test_synchronizing_every_step_is_ddp(strategy, options, ddp_ref, train):
    (ddp_result, ddp), (result, state) = ddp_ref, train(strategy, 4, *COMMON, *options, max_steps=4)
    assert max_param_diff(ddp, state) < TIGHT
    # One all-reduce of the whole model a step: the bytes DDP sends for its gradients.
    # the same all-reduced bytes (DDP adds a small broadcast in step 2: its buckets rebuilt, bucket order from rank 0)
    assert [s["ops"]["all_reduce"][1] for s in result["steps"]] == [s["ops"]["all_reduce"][1] for s in ddp_result["steps"]]


@pytest.mark.parametrize("strategy", ["localsgd", "diloco"])
def test_every_fourth_step_learns_on_a_quarter_of_the_bytes(strategy, train):
    result, state = train(strategy, 4, *LEARNING, "sync_every=4", max_steps=8)
    steps = result["steps"]
    losses = [s["loss"] for s in steps]
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # it learns (measured: 9.53 → 8.81 for both)
    # Only steps 4 and 8 communicate: one all-reduce of the model (simple_cnn has no BatchNorm),
    # counted as the ring moves it, 2(n−1)/n of the bytes each way: what DDP sends every step.
    model_bytes = sum(v.numel() * v.element_size() for v in state["model"].values())
    assert [s["step"] for s in steps if s["bytes_sent"]] == [4, 8]
    assert all(steps[i]["ops"] == {"all_reduce": [1, model_bytes]} for i in (3, 7))
    assert steps[7]["bytes_sent"] == pytest.approx(1.5 * model_bytes, abs=1)
    per_step = sum(s["bytes_sent"] for s in steps) / len(steps)
    assert per_step == pytest.approx(steps[7]["bytes_sent"] / 4)  # a quarter of H = 1's
    assert result["summary"]["bytes_sent_per_step"] == pytest.approx(per_step)  # figures per period of H


# (strategy, its options, checkpoint_every): killed at step 7, resumed from step 6 (two steps
# after a sync: each rank's own model comes back) or from step 4 (a sync: rank 0's model is all)
RESTARTS = [pytest.param("diloco", ("inner=adamw",), 3, id="diloco-adamw-between-syncs"),
            pytest.param("localsgd", (), 4, id="localsgd-at-a-sync", marks=pytest.mark.slow)]


@pytest.mark.parametrize("strategy,options,every", RESTARTS)
def test_a_restart_continues_the_same_run(strategy, options, every, tmp_path):
    """Killed at step 7 of 8 with H = 4, the job resumes from its last checkpoint: every rank's
    own optimizer state (AdamW's moments, SGD's momentum: never averaged), its own model if
    between syncs, and DiLoCo's outer momentum and synced parameters must come back, or the
    resumed run drifts from the uninterrupted one (measured: 2.0e-3 without the outer momentum,
    1.0e-2 without each rank's own model and AdamW state)."""
    sets = (*COMMON, "sync_every=4", *options)
    _, straight = run_to(tmp_path / "straight", strategy, 4, *sets, max_steps=8)
    restart = (f"checkpoint_every={every}", "fault=1:7:kill", "max_restarts=1")
    result, restarted = run_to(tmp_path / "restarted", strategy, 4, *sets, *restart, max_steps=8)
    assert len(result["steps"]) == 8
    assert max_param_diff(straight, restarted) < TIGHT


BAD = [("localsgd", "sync_every=0", "sync_every=0: H must be at least 1"),
       ("diloco", "sync_every=-2", "sync_every=-2: H must be at least 1"),
       ("diloco", "inner=adam", "inner='adam' is not one of sgd, adamw"),
       ("diloco", "outer_momentum=1", "0 <= outer_momentum < 1"),
       ("localsgd", "sync_every=often", "sync_every=often: expected a int")]


@pytest.mark.parametrize("strategy,option,message", BAD, ids=[b[1] for b in BAD])
def test_a_bad_option_is_one_clear_line(strategy, option, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--profile", "cpu", "--strategy", strategy, "--set", option, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_the_label_names_h():
    from labkit.profiles import make_config
    from labkit.strategies import load_strategy

    for strategy, sets, label in [("localsgd", {"sync_every": "8"}, "localsgd H=8"),
                                  ("diloco", {"sync_every": "500", "inner": "adamw"}, "diloco H=500 adamw")]:
        cfg = make_config("cpu", strategy=strategy, **sets)
        about = load_strategy(strategy).about.of(cfg)
        assert about.label == label and about.sync_every == int(sets["sync_every"])
