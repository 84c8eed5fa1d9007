"""The `labkit` command: check, run, data, compare, lab.

Every subcommand is a thin shell over a function the notebooks call too. Bad input
ends with one line `labkit: error: …` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, parse_overrides


def cmd_check(args) -> int:
    from .hardware import check_lines

    width = max(len(name) for name, _ in check_lines())
    for name, value in check_lines():
        print(f"{name:<{width}}  {value}")
    return 0


def cmd_run(args) -> int:
    from .launch import Job, describe_failure
    from .profiles import make_config

    overrides = parse_overrides(args.set)
    for key in ("strategy", "nproc", "epochs", "max_steps", "name"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.out:
        overrides["out_dir"] = args.out
    cfg = make_config(args.profile, **overrides)
    print(f"labkit: {cfg.strategy} on {cfg.nproc} rank(s), {cfg.backend}/{cfg.device}, "
          f"{cfg.model} on {cfg.dataset}, global batch {cfg.global_batch} → {cfg.out_dir}", flush=True)
    job = Job(cfg).start()
    try:
        status = job.wait(progress=True)
    except KeyboardInterrupt:
        print(f"labkit: interrupted; stopped every process of {cfg.name}", file=sys.stderr)
        return 130
    import json
    result = json.loads((job.out / "result.json").read_text())
    if status != "ok":
        print(describe_failure(result), file=sys.stderr)
        return 1
    print_summary(result)
    return 0


def print_summary(result: dict) -> None:
    s = result["summary"]
    rows = [("throughput", f"{s['throughput_img_s']:.1f} img/s"), ("total time", f"{s['total_time_s']:.1f} s"),
            ("step time median / p90", f"{s['step_time_median_s'] * 1e3:.1f} / {s['step_time_p90_s'] * 1e3:.1f} ms"),
            ("sync share", f"{s['sync_share_pct']:.1f} %"),
            ("bytes sent per step", f"{s['bytes_sent_per_step'] / 1e6:.2f} MB"),
            ("final train loss", f"{s['final_train_loss']:.4f}")]
    if s.get("best_val_top1") is not None:
        rows.append(("best val top-1 / top-5", f"{s['best_val_top1']:.1f} / {s['best_val_top5']:.1f} %"))
    for name, value in rows:
        print(f"  {name:<24} {value}")


def cmd_data_tiny(args) -> int:
    from .config import LAB_ROOT
    from .data import make_tiny

    root = make_tiny(args.dst or LAB_ROOT / "data" / "tiny", seed=args.seed)
    print(f"tiny dataset ready at {root}")
    return 0


def cmd_lab(args) -> int:
    """Run the original four methods in sequence and print the comparison."""
    from . import run
    from .analysis import comparison_table, runs_frame
    from .profiles import make_config

    results = []
    for strategy in ("single", "ddp", "allreduce", "ps"):
        cfg = make_config(args.profile, strategy=strategy, **parse_overrides(args.set))
        print(f"== {strategy}: {cfg.nproc} rank(s) → {cfg.out_dir}", flush=True)
        results.append(run(cfg))
    print(comparison_table(runs_frame(results)).to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .strategies import STRATEGIES

    parser = argparse.ArgumentParser(prog="labkit", description="Data-parallel training lab.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("check", help="what this machine has and which profile auto picks").set_defaults(func=cmd_check)

    run = sub.add_parser("run", help="train with one synchronization method (a real torchrun job)")
    run.add_argument("--strategy", choices=sorted(STRATEGIES), required=True)
    run.add_argument("--profile", default="auto", help="auto (default), imagenet, synthetic or cpu")
    run.add_argument("--nproc", type=int, help="ranks (one per GPU with NCCL)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--epochs", type=int)
    group.add_argument("--max-steps", dest="max_steps", type=int)
    run.add_argument("--name", help="run folder name under results/runs/")
    run.add_argument("--out", help="run folder (default results/runs/<strategy>-<profile>-<time>)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any RunConfig field, e.g. --set lr=0.05 (repeatable)")
    run.set_defaults(func=cmd_run)

    lab = sub.add_parser("lab", help="run the lab: every original method, then the comparison")
    lab.add_argument("--profile", default="auto")
    lab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    lab.set_defaults(func=cmd_lab)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    tiny = data.add_parser("tiny", help="generate the small 10-class JPEG dataset")
    tiny.add_argument("--dst", help="folder (default data/tiny)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_data_tiny)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as error:
        print(f"labkit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
