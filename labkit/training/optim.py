"""The loop's optimizer, chosen with `--set optimizer=`: sgd (the default) or adamw.

    sgd    torch.optim.SGD with the run's momentum and weight decay (L2, added to the gradient)
    adamw  torch.optim.AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
           ICLR 2019): Adam's two moments per parameter, and the run's weight decay applied to
           the weights directly, not through the gradient; torch's betas (0.9, 0.999) and eps.
           Give it its own learning rate (`--set lr=1e-3` is a usual start): the default lr
           follows SGD's linear scaling rule.

A method that shards the optimizer builds its own from this one's class and param groups
(as torch's ZeroRedundancyOptimizer does), so whichever is chosen here is the one it shards.
"""

import torch

OPTIMIZERS = {
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay),
}


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimizer cfg.optimizer names, over `params` (profiles.check_values refused any other)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer='{cfg.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](params, cfg)


def set_lr(optimizer, lr: float) -> None:
    """Every param group's learning rate: the loop sets it before each step (cfg.lr_at(step), a
    function of the step number alone, so every rank agrees and a resumed run continues it)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
