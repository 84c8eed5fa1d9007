"""SyncBatchNorm (`--set sync_bn=true`): with BatchNorm, data parallel on n ranks of b images
is one process on n·b only when every BatchNorm normalizes over the global batch.

Real torchrun, float64 (where rounding is ~1e-15 and a different update ≥ 1e-4, as in
test_equivalence): ddp on 2 ranks × 8 with sync_bn equals single on 16, parameters and
running statistics; without it they differ. What the layers send is counted (the step
record's sync_bn_calls / sync_bn_bytes_sent, the summary's sync_bn) and checked against
the arithmetic from the model's BatchNorm layers. Three 2-step runs, made once."""

import pytest

from conftest import max_param_diff, run_to

TIGHT = 1e-9  # float64: rounding is ~1e-15
APART = 1e-6  # what normalizing over 8 images instead of 16 changes is far above rounding
FLOAT64 = ("augment=false", "workers=0", "dtype=float64", "lr_warmup_steps=0", "model=resnet18_small")
STEPS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """single on 16; ddp on 2 × 8 with and without sync_bn: {name: (result, checkpoint)}."""
    base = tmp_path_factory.mktemp("sync_bn")
    return {
        "single": run_to(base / "single", "single", 1, *FLOAT64, "batch_size=16", max_steps=STEPS),
        "with": run_to(base / "with", "ddp", 2, *FLOAT64, "batch_size=8", "sync_bn=true", max_steps=STEPS),
        "without": run_to(base / "without", "ddp", 2, *FLOAT64, "batch_size=8", max_steps=STEPS),
    }


def test_with_sync_bn_ddp_on_2x8_equals_single_on_16(runs):
    single, with_sync = runs["single"][1], runs["with"][1]
    assert max_param_diff(single, with_sync) < TIGHT
    # the running statistics too: the mean and unbiased variance of the same 16 images
    assert max_param_diff(single, with_sync, include_buffers=True) < TIGHT


def test_without_sync_bn_they_differ(runs):
    assert max_param_diff(runs["single"][1], runs["without"][1]) > APART


def test_the_layers_collectives_are_counted_as_the_arithmetic_says(runs):
    import torch.nn as nn

    from labkit.training.models import build_model

    channels = [m.num_features for m in build_model("resnet18_small", 10).modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(channels) == 20 and sum(channels) == 4800  # the stem's, 16 in the blocks, 3 downsamples'
    n, value = 2, 8  # ranks, bytes of a float64
    # per layer and step: one all-reduce of [Σx, Σx², count] (2C + 1 values) in forward and one
    # of its gradient in backward; a ring all-reduce of S bytes sends 2(n−1)/n·S per rank
    calls = 2 * len(channels)
    sent = sum(2 * 2 * (n - 1) / n * (2 * c + 1) * value for c in channels)
    result = runs["with"][0]
    for step in result["steps"]:
        assert (step["sync_bn_calls"], step["sync_bn_bytes_sent"]) == (calls, sent)
    assert result["summary"]["sync_bn"] == {"calls_per_step": calls, "bytes_sent_per_step": sent}
    assert result["method"] == "ddp sync_bn"  # another method in a comparison
    plain = runs["without"][0]
    assert "sync_bn" not in plain["summary"] and "sync_bn_calls" not in plain["steps"][0]


@pytest.mark.parametrize("strategy, sets, why", [
    ("single", {}, "it runs one process"),
    ("localsgd", {}, "train apart for"),
    ("diloco", {}, "train apart for"),
    ("ssp", {}, "server ranks run no forward"),
    ("ps", {"ps_server_trains": False}, "server ranks run no forward"),
])
def test_a_method_where_it_does_not_apply_refuses_it_in_one_line(strategy, sets, why):
    from labkit.errors import ConfigError
    from labkit.profiles import make_config

    with pytest.raises(ConfigError, match=f"sync_bn=true does not apply to {strategy}: .*{why}") as error:
        make_config("cpu", strategy=strategy, sync_bn=True, **sets)
    assert "\n" not in str(error.value)
    make_config("cpu", strategy="ddp", sync_bn=True)  # where it applies, accepted


def test_the_refusal_comes_before_launch(tmp_path, capsys):
    from labkit.cli import main

    out = tmp_path / "run"
    code = main(["run", "--profile", "cpu", "--strategy", "localsgd", "--set", "sync_bn=true", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "sync_bn=true does not apply to localsgd" in err[-1]
    assert not out.exists()  # no folder, no process: refused before torchrun was let go
