"""powersgd — DDP with PyTorch's PowerSGD communication hook (low-rank gradients).

Idea (Vogels et al., 2019): a gradient matrix M (n×m) is approximated as P·Qᵀ with
rank r ≪ n, m, found by one step of power iteration; ranks all-reduce P (n×r) and
Q (m×r) instead of M, and the error left over is fed back into the next step so
nothing is lost for good. Vectors (biases, BatchNorm) and matrices too small to
gain are sent as they are.

Communication: for the first `powersgd_start_iter` steps plain all-reduce, then
about r·(n+m) instead of n·m values per matrix. Option `powersgd_rank` (r).
Compare bytes per step and final accuracy with `ddp`.

Expect it to be slower than `ddp` on the cpu profile even though it sends far fewer
bytes: the compression is compute (an orthogonalisation and two matrix products per
matrix, every step), and on gloo this lab finishes one bucket before starting the next
(see `one_bucket_at_a_time`), so nothing overlaps. Its gain is on slow links.
"""

import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

from .base import About, Option
from .ddp import DDP_OPTIONS, TorchDDP


def refuse(cfg, o) -> str:
    if o.powersgd_start_iter < 2 or o.powersgd_rank < 1:
        return (f"powersgd_start_iter must be at least 2 (DDP's first two steps run uncompressed) "
                f"and powersgd_rank at least 1 (got {o.powersgd_start_iter}, {o.powersgd_rank})")
    # An overflowing fp16 step leaves NaN in the hook's error-feedback and warm-start
    # memories; every later step then overflows and the scaler skips them all, for good.
    if cfg.amp == "fp16":
        return ("powersgd does not support amp=fp16 (one overflowing step poisons its error-feedback "
                "memory for good); use --set amp=bf16")
    # The hook .view()s DDP's bucket views, which keep channels_last strides.
    if cfg.channels_last:
        return ("powersgd does not support channels_last (PowerSGD's hook reshapes gradient "
                "buckets with .view); use --set channels_last=false")
    return ""


class PowerSGD(TorchDDP):
    about = About(
        options=DDP_OPTIONS + (
            Option("powersgd_rank", 1, "rank r of the approximation P·Qᵀ"),
            Option("powersgd_start_iter", 10, "plain all-reduce before this step (at least 2)"),
        ),
        label=lambda cfg, o: cfg.strategy_name + ("" if o.powersgd_rank == 1 else f" r{o.powersgd_rank}"),
        refuse=refuse, overlaps_backward=True)

    def register_hook(self, ddp):  # instead of DDP's: PowerSGD's hook, and no ddp_hook option
        self.state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=self.options.powersgd_rank,
                                            start_powerSGD_iter=self.options.powersgd_start_iter)
        hook = powersgd.powerSGD_hook if dist.get_backend() == "nccl" else one_bucket_at_a_time
        ddp.register_comm_hook(self.state, hook)


def one_bucket_at_a_time(state, bucket):
    """PowerSGD's hook chains three all-reduces per bucket (vectors, then P, then Q),
    each issued from the previous one's completion callback. NCCL runs those callbacks
    at once, in bucket order; gloo runs them on its own worker threads, so with several
    buckets in flight two ranks could issue their next all-reduce for different buckets
    and the collectives would no longer match. Finishing each bucket before DDP hands
    over the next keeps one order on every rank (at the price of overlap, on gloo only)."""
    future = powersgd.powerSGD_hook(state, bucket)
    future.wait()
    return future
