"""Every method makes the same update as DDP: same seed, same data order, same global
batch → the same parameters after several steps (real torchrun, 4 gloo ranks)."""

from conftest import max_param_diff

TIGHT = 1e-5
# No augmentation: random crops would draw per-rank random numbers.
COMMON = ("augment=false", "batch_size=4", "workers=0")


def test_allreduce_and_ps_match_ddp_with_batchnorm(train):
    _, ddp = train("ddp", 4, *COMMON, "model=resnet18_small", max_steps=3)
    for strategy in ("allreduce", "ps"):
        _, other = train(strategy, 4, *COMMON, "model=resnet18_small", max_steps=3)
        assert max_param_diff(ddp, other) < TIGHT, strategy
    # and the update really moved the weights (an equivalence of no-ops proves nothing)
    _, start = train("ddp", 4, *COMMON, "model=resnet18_small", "lr=1e-12", max_steps=1, name="frozen")
    assert max_param_diff(ddp, start) > 1e-3


def test_dedicated_server_matches_ddp_on_its_workers(train):
    """ps with a dedicated server on 4 ranks = 3 workers: the same as DDP on 3 ranks.
    simple_cnn: with 3 ranks, dividing by 3 rounds differently in each method, and
    BatchNorm over 4 images per rank amplifies that rounding chaotically (~1e-4)."""
    _, ddp3 = train("ddp", 3, *COMMON, "model=simple_cnn", max_steps=4)
    _, ps = train("ps", 4, *COMMON, "model=simple_cnn", "ps_server_trains=false", max_steps=4)
    assert max_param_diff(ddp3, ps) < TIGHT


def test_without_batchnorm_data_parallel_equals_single_on_the_global_batch(train):
    _, ddp = train("ddp", 4, *COMMON, "model=simple_cnn", max_steps=4)
    _, single = train("single", 1, "augment=false", "batch_size=16", "workers=0", "model=simple_cnn", max_steps=4)
    assert max_param_diff(ddp, single) < TIGHT
