"""What the run leaves behind: every rank's figures gathered on rank 0, then result.json."""

import statistics

import torch.distributed as dist

from labkit import hardware
from labkit.training.timing import summarize


def gather_timeline(intervals, rank) -> list[dict]:
    """Every rank's phase intervals of the timeline window, on rank 0 (wall-clock seconds)."""
    mine = [{"rank": rank, "step": step, "phase": phase, "start": start, "end": end}
            for step, phase, start, end in intervals]
    if not dist.is_initialized():
        return mine
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return [event for events in everyone for event in events]


def gather_step_medians(steps, warmup) -> list[float]:
    """Every rank's median step time, so a straggler shows in the result."""
    measured = [s["step_s"] for s in steps[warmup:]] or [s["step_s"] for s in steps] or [0.0]
    median = sorted(measured)[len(measured) // 2]
    if not dist.is_initialized():
        return [median]
    medians = [None] * dist.get_world_size()
    dist.all_gather_object(medians, median)
    return medians


def sync_bn_figures(steps, warmup) -> dict | None:
    """What SyncBatchNorm's layers sent per step on rank 0, counted by the layers themselves
    apart from the step's bytes_sent (models.SyncBatchNormCount): their collectives and
    bytes, the medians over the measured steps (every step makes the same ones). None where
    no step counted them."""
    measured = [s for s in steps[warmup:] or steps if "sync_bn_calls" in s]
    if not measured:
        return None
    return {"calls_per_step": statistics.median(s["sync_bn_calls"] for s in measured),
            "bytes_sent_per_step": statistics.median(s["sync_bn_bytes_sent"] for s in measured)}


def build_result(cfg, about, world, device, steps, epochs, total_time, rank_medians, compute_only_s,
                 timeline) -> dict:
    """`about`: the method's declaration for this run (About.of(cfg)): its label, overlap, sync period."""
    summary = summarize(steps, cfg.timing_warmup_steps, cfg.global_batch, compute_only_s,
                        overlaps_backward=about.overlaps_backward,
                        period=about.sync_every)  # local SGD: figures per period of H steps
    val = [e["val_top1"] for e in epochs if "val_top1" in e]
    val5 = [e["val_top5"] for e in epochs if "val_top5" in e]
    summary.update(total_time_s=total_time, final_train_loss=epochs[-1]["train_loss"] if epochs else None,
                   best_val_top1=max(val) if val else None, best_val_top5=max(val5) if val5 else None,
                   rank_step_time_median_s=rank_medians)
    if cfg.sync_bn:
        summary["sync_bn"] = sync_bn_figures(steps, cfg.timing_warmup_steps)
    # settings that change every method make another method in a comparison
    method = about.label + (f" accumulate={cfg.accumulate}" if cfg.accumulate > 1 else "") + \
        (f" straggler={cfg.straggler}" if cfg.straggler else "") + (" sync_bn" if cfg.sync_bn else "")
    return {
        "schema": 1, "name": cfg.name, "strategy": cfg.strategy_name, "method": method, "status": "ok",
        "config": cfg.to_dict(), "env": hardware.environment(), "world_size": world,
        "backend": cfg.backend if world > 1 else None, "device": str(device),
        "global_batch": cfg.global_batch, "summary": summary, "epochs": epochs, "steps": steps,
        "timeline": timeline, "cost_model_note": about.cost_model_note or None,
    }
