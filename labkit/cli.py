"""The `labkit` command: machine, run, data, compare, lab, check-strategy.

Every subcommand is a thin shell over a function the notebooks call too. Bad input
ends with one line `labkit: error: …` and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from labkit.config import ConfigError, parse_overrides


def cmd_machine(args) -> int:
    if args.gpu:  # the GPU path's short NCCL checks (one line without a GPU)
        from labkit.measure.gpu_check import main as gpu_check

        return gpu_check(["--steps", str(args.steps)])
    from labkit.hardware import machine_lines
    from labkit.jobs.cluster import mode_line
    from labkit.lockfile import summary

    # installed versions against requirements.lock; which way this machine emulates a cluster
    lines = [*machine_lines(), ("emulated cluster", mode_line()), ("lock", summary())]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    return 0


# What --resume leaves as it was: a resumed run is the same run. --max-restarts may change.
NOT_WITH_RESUME = ("strategy", "nproc", "nodes", "node_rank", "rdzv_endpoint", "interface", "epochs", "max_steps",
                   "name", "out", "set")


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, SLURM's scancel, a system shutting down) or SIGHUP (the terminal went
    away): stop the run as Ctrl-C does, so it ends interrupted, with its status written."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_like_ctrl_c():
    """While the run lasts, SIGTERM and SIGHUP raise Terminated (the handlers before are put
    back afterwards: `main` may run inside another program, a test or a notebook)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    before = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, old in before.items():
            signal.signal(signum, old)


def cmd_run(args) -> int:
    from labkit.jobs.job import Job, describe_failure, prestart
    from labkit.profiles import make_config, resume_config

    prestarted = None
    if args.resume:
        given = [f"--{key.replace('_', '-')}" for key in NOT_WITH_RESUME if getattr(args, key, None)]
        if args.profile != "auto":
            given.append("--profile")
        if given:
            raise ConfigError(f"--resume continues {args.resume} exactly as it was set up; drop {' '.join(given)} "
                              f"(only --max-restarts may be given with it), or start a new run in a new folder")
        cfg = resume_config(args.resume, max_restarts=args.max_restarts)
    elif not args.strategy:
        raise ConfigError("--strategy is required (or --resume DIR to continue a run)")
    else:
        overrides = parse_overrides(args.set)
        for key in ("strategy", "nproc", "epochs", "max_steps", "name", "max_restarts", "nodes", "node_rank",
                    "rdzv_endpoint", "interface"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        if args.out:
            overrides["out_dir"] = args.out
        prestarted = prestart(args.profile, overrides)  # torchrun imports torch while make_config does
        try:
            cfg = make_config(args.profile, **overrides)
        except BaseException:
            if prestarted is not None:
                prestarted.cancel()
            raise

    nodes = f" on {cfg.nodes} {'emulated ' if cfg.emulated else ''}node(s)" if cfg.nodes > 1 else ""
    print(f"labkit: {'resuming ' if cfg.resume else ''}{cfg.strategy} on {cfg.nproc} rank(s){nodes}, "
          f"{cfg.backend}/{cfg.device}, {cfg.model} on {cfg.dataset}, global batch {cfg.global_batch} → {cfg.out_dir}",
          flush=True)
    try:
        with stop_like_ctrl_c():
            job = Job(cfg).start(prestarted)
            status = job.wait(progress=True)
    except Terminated as stop:
        import signal

        print(f"labkit: {signal.Signals(stop.signum).name}: stopped every process of {cfg.name}; "
              f"its status is interrupted", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"labkit: interrupted; stopped every process of {cfg.name}", file=sys.stderr)
        return 130
    if status == "ok" and not (job.out / "result.json").exists():  # a node other than node 0, on its own disk
        print(f"labkit: node {cfg.node_rank}'s ranks finished ok; node 0 wrote the run's result.json into its own "
              f"--out, on that machine")
        return 0
    result = job.read_result()
    if status != "ok":
        print(describe_failure(result), file=sys.stderr)
        return 1
    print_summary(result)
    return 0


def print_summary(result: dict) -> None:
    s = result["summary"]
    rows = [("throughput", f"{s['throughput_img_s']:.1f} img/s steady (median step); "
                           f"{s.get('throughput_wall_img_s', float('nan')):.1f} img/s wall-clock"), ("total time", f"{s['total_time_s']:.1f} s"),
            ("step time median / p90", f"{s['step_time_median_s'] * 1e3:.1f} / {s['step_time_p90_s'] * 1e3:.1f} ms"),
            ("sync share", f"{s['sync_share_pct']:.1f} %"),
            ("bytes sent per step", f"{s['bytes_sent_per_step'] / 1e6:.2f} MB"),
            ("final train loss", f"{s['final_train_loss']:.4f}")]
    if s.get("best_val_top1") is not None:
        rows.append(("best val top-1 / top-5", f"{s['best_val_top1']:.1f} / {s['best_val_top5']:.1f} %"))
    for name, value in rows:
        print(f"  {name:<24} {value}")


def cmd_data_tiny(args) -> int:
    from labkit.config import LAB_ROOT
    from labkit.datasets.tiny import make_tiny

    root = make_tiny(args.dst or LAB_ROOT / "data" / "tiny", seed=args.seed)
    print(f"tiny dataset ready at {root}")
    return 0


def cmd_lab(args) -> int:
    """Execute the notebooks in order with papermill (results/notebooks/)."""
    from labkit.lab import LabFailed, run_notebooks

    parameters = {"profile": args.profile}
    for pair in args.p:
        key, _, text = pair.partition("=")
        parameters[key] = _literal(text)
    try:
        run_notebooks(parameters, only=args.only.split(",") if args.only else None)
    except LabFailed as error:
        print(f"labkit: lab stopped: {error}", file=sys.stderr)
        return 1
    return 0


def _literal(text: str):
    """-p / --set values typed: numbers and Python literals as such, true/false/yes/no/on/off
    as booleans (the same words `--set` takes for a config field), the rest strings."""
    import ast

    from labkit.config import bool_word
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text if bool_word(text) is None else bool_word(text)


def cmd_compare(args) -> int:
    """The comparison pipeline of labkit/report/: select, draw, report."""
    from labkit.config import results_root
    from labkit.report.costmodel import load_fits
    from labkit.report.frames import communication_frame
    from labkit.report.selection import load_results, select_runs
    from labkit.report.sentences import report_text
    from labkit.report.plots import all_figures, save_all

    chosen = select_runs(load_results(args.runs or None), profile=args.profile)
    if not chosen.kept:
        for line in chosen.lines():  # every run left out, with the reason (else the report lists them)
            print(line)
        raise ConfigError("no finished run to compare; run one first (labkit run --strategy ddp)")
    plots = save_all(all_figures(chosen.kept), results_root() / "plots")
    world = max(r["world_size"] for r in chosen.kept)
    fits = load_fits(results_root() / "bench" / "collectives.json", world)
    report = results_root() / "performance_report.txt"
    report.write_text(report_text(chosen, communication_frame(chosen.kept, fits), baseline=args.baseline, fits=fits))
    print(report.read_text())
    print(f"plots: {', '.join(p.name for p in plots)} in {plots[0].parent}")
    return 0


def cmd_prepare_imagenet(args) -> int:
    from labkit.datasets.prep import prepare
    from labkit.datasets.verify import verify

    kind = prepare(args.src, args.dst, workers=args.workers, copy=args.copy)
    report = verify(args.dst)
    print(f"prepared {args.dst} from the {kind} input: " +
          ", ".join(f"{split} {s['images']} images in {s['classes']} classes" for split, s in report["splits"].items()))
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    return 0 if not report["problems"] else 1


def cmd_verify(args) -> int:
    from pathlib import Path

    from labkit.datasets.verify import verify

    if not Path(args.dir).is_dir():
        raise ConfigError(f"{args.dir} is not a folder; give the ImageFolder tree (the folder holding train/ and val/)")

    report = verify(args.dir, decode=args.decode, workers=args.workers)
    for split, stats in report["splits"].items():
        print(f"{split}: {stats['classes']} classes, {stats['images']} images")
    print("full ImageNet-1k (1,281,167 / 50,000)" if report["full_imagenet"] else "not the full ImageNet-1k counts")
    for problem in report["problems"]:
        print(f"problem: {problem}")
    print("ok" if not report["problems"] else f"{len(report['problems'])} problem(s)")
    return 0 if not report["problems"] else 1


def cmd_subset(args) -> int:
    from labkit.datasets.verify import subset

    dst = subset(args.src, args.dst, args.classes, args.train_per_class, args.val_per_class, args.seed)
    print(f"subset ready at {dst}: use it with --set dataset=imagefolder --set data_dir={dst} "
          f"--set num_classes={args.classes}")
    return 0


def cmd_download_kaggle(args) -> int:
    from labkit.datasets.verify import download_kaggle

    download_kaggle(args.dst)
    print(f"downloaded into {args.dst}; next: labkit data prepare-imagenet --src {args.dst}")
    return 0


def cmd_bench_collectives(args) -> int:
    from pathlib import Path

    from labkit.measure.bench import collectives_table, run_collectives
    from labkit.config import results_root

    out = Path(args.out) if args.out else results_root() / "bench"
    from labkit.measure.bench import default_ranks

    nproc = args.nproc or (args.nodes if args.nodes > 1 else default_ranks())  # emulated: one rank per node
    bench = run_collectives(nproc, out, max_mb=args.max_mb, repeats=args.repeats, nodes=args.nodes, link=args.link)
    print(collectives_table(bench))
    print(f"written: {out / 'collectives.json'}, {out / 'collectives.png'}")
    return 0


def cmd_bench_harness(args) -> int:
    from labkit.measure.bench import harness

    outcome = harness(args.nproc, args.steps, args.timing_warmup, args.repeats)
    print(f"labkit ddp / plain DDP script throughput ({outcome['profile']} profile, {outcome['nproc']} ranks): "
          f"{outcome['ratio_of_medians']:.3f} "
          f"(per repeat {outcome['ratio_min']:.3f} … {outcome['ratio_max']:.3f}; target ≥ 0.97)")
    return 0


def cmd_sweep(args) -> int:
    """Methods interleaved (a b c a b c …), K repeats, then the comparison of exactly those runs."""
    from labkit.jobs.sweep import sweep
    from labkit.report.frames import runs_frame, scaling_frame
    from labkit.report.selection import Selection
    from labkit.report.sentences import report_text

    from labkit.strategies import load_strategy

    if args.repeats < 1:
        raise ConfigError(f"--repeats {args.repeats}: give 1 or more")
    sizes = world_sizes(args.nproc, "--nproc") if args.nproc else None
    strategies = [name.strip() for name in args.strategy.split(",") if name.strip()]
    for name in strategies:  # every method known before the first run starts
        load_strategy(name)
    results = sweep(strategies, args.repeats, args.profile, parse_overrides(args.set), sizes=sizes, out=args.out)
    print(report_text(Selection(kept=results), baseline=args.baseline))
    runs = runs_frame(results)
    if runs.world_size.nunique() > 1:  # last, so a script reads it: the one definition of scaling efficiency
        print(scaling_frame(runs).to_string(index=False, float_format=lambda v: f"{v:,.3f}", na_rep="—"))
    return 0


def cmd_strategies(args) -> int:
    from labkit.strategies import REGISTRY, describe

    for spec in args.names or REGISTRY:
        print("\n".join(describe(spec)))
    return 0


def cmd_check_strategy(args) -> int:
    from labkit.assignments.check import METHODS, check

    if args.method and args.method not in METHODS:
        raise ConfigError(f"--method {args.method}: choose one of {', '.join(METHODS)}")
    options = {k: _literal(v) for k, _, v in (pair.partition("=") for pair in args.set)}
    try:
        report = check(args.spec, method=args.method, worlds=world_sizes(args.nproc, "--nproc"),
                       model=args.model, steps=args.steps, options=options, timeout_s=args.timeout)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    print(f"{'all checks passed' if report.ok else 'FAILED'} in {report.seconds:.0f} s")
    return 0 if report.ok else 1


def world_sizes(text: str, flag: str) -> list[int]:
    """'2,3,4' → [2, 3, 4], or one line saying what is wrong."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"{flag} {text}: give world sizes of 1 or more, separated by commas (e.g. 2,3,4)")
    return sizes


def cmd_slurm(args) -> int:
    """An sbatch script for several nodes: `labkit slurm --nodes 2 --gpus-per-node 4 -- RUN OPTIONS`."""
    from pathlib import Path

    from labkit.jobs.slurm import sbatch_script

    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    text = sbatch_script(args.nodes, args.gpus_per_node, run_args, interface=args.interface or "", port=args.port,
                         job_name=args.job_name)
    given, unknown = build_parser().parse_known_args(["run", *run_args])  # a typo fails here, not on the cluster
    if unknown:
        raise ConfigError(f"labkit run takes no {' '.join(unknown)} (labkit run --help lists its options)")
    if not (given.strategy or given.resume):
        raise ConfigError("give labkit run's options after --, e.g. labkit slurm --nodes 2 --gpus-per-node 4 "
                          "-- --strategy ddp --profile imagenet")
    if args.out:
        Path(args.out).write_text(text)
        print(f"labkit: wrote {args.out}; submit it with: sbatch {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


STRATEGY_HELP = "a method by name (labkit strategies lists them) or a file of yours: path/to/file.py:ClassName"


def build_parser() -> argparse.ArgumentParser:
    from labkit.strategies import BASELINE, REGISTRY

    parser = argparse.ArgumentParser(prog="labkit", description="Data-parallel training lab.")
    sub = parser.add_subparsers(dest="command", required=True)

    machine = sub.add_parser("machine", help="what this machine has and which profile auto picks")
    machine.add_argument("--gpu", action="store_true", help="run the short NCCL checks of every method (make gpu-check)")
    machine.add_argument("--steps", type=int, default=30, help="with --gpu: synthetic steps per run")
    machine.set_defaults(func=cmd_machine)

    run = sub.add_parser("run", help="train with one synchronization method (a real torchrun job)")
    run.add_argument("--strategy", help=STRATEGY_HELP + f" ({', '.join(REGISTRY)})")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    run.add_argument("--max-restarts", dest="max_restarts", type=int, help="torchrun restarts after a failure")
    run.add_argument("--profile", default="auto", help="auto (default), imagenet, synthetic or cpu")
    run.add_argument("--nproc", type=int, help="ranks in the whole job, over every node (one per GPU with NCCL)")
    run.add_argument("--nnodes", dest="nodes", type=int, help="nodes in the job (each runs nproc/nnodes ranks)")
    run.add_argument("--node-rank", dest="node_rank", type=int, help="which node this machine is (0 … nnodes-1)")
    run.add_argument("--rdzv-endpoint", dest="rdzv_endpoint", metavar="HOST:PORT",
                     help="node 0's rendezvous (torchrun's c10d); without it, --nnodes emulates the nodes here")
    run.add_argument("--interface", help="network interface for gloo/NCCL on real nodes (e.g. eth1)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--epochs", type=int)
    group.add_argument("--max-steps", dest="max_steps", type=int)
    run.add_argument("--name", help="run folder name under results/runs/")
    run.add_argument("--out", help="run folder (default results/runs/<strategy>-<profile>-<time>)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any RunConfig field or an option of the method, e.g. --set lr=0.05 "
                          "--set bucket_mb=5 (repeatable; `labkit strategies` lists each method's options)")
    run.set_defaults(func=cmd_run)

    methods = sub.add_parser("strategies", help="the synchronization methods and the options each takes")
    methods.add_argument("names", nargs="*", help="names or path/to/file.py:ClassName (default: every method)")
    methods.set_defaults(func=cmd_strategies)

    checker = sub.add_parser("check-strategy", help="check your strategy file against DDP under torchrun (2, 3, 4 ranks)")
    checker.add_argument("spec", metavar="FILE:CLASS", help="e.g. my_ring.py:MyRing (or a method's name)")
    checker.add_argument("--method", help="hold bytes and collectives to this method's analytic counts "
                                          "(allreduce, bucketed, overlap, ring, ps, ps_sharded)")
    checker.add_argument("--nproc", default="2,3,4", help="comma-separated world sizes")
    checker.add_argument("--model", default="mlp", help="mlp (517 parameters: no world size 2, 3 or 4 divides it), odd (58) or deep")
    checker.add_argument("--steps", type=int, default=3)
    checker.add_argument("--timeout", type=float, default=10.0, help="seconds without progress = deadlock")
    checker.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an option, e.g. bucket_mb=0.001")
    checker.set_defaults(func=cmd_check_strategy)

    lab = sub.add_parser("lab", help="execute the notebooks headless with papermill (results/notebooks/)")
    lab.add_argument("--profile", default="auto")
    lab.add_argument("--only", help="comma-separated notebook numbers, e.g. 00b,01 (default: every notebook)")
    lab.add_argument("-p", action="append", default=[], metavar="KEY=VALUE", help="notebook parameter")
    lab.set_defaults(func=cmd_lab)

    compare = sub.add_parser("compare", help="plots and report from result files (default: results/runs)")
    compare.add_argument("runs", nargs="*", help="run folders (default: every run under results/runs)")
    compare.add_argument("--profile", help="compare only runs of this profile (e.g. cpu)")
    compare.add_argument("--baseline", metavar="METHOD", default=BASELINE,
                         help=f"vs base: throughput relative to this method in the same setup (default {BASELINE}, "
                              "the reference experiment's)")
    compare.set_defaults(func=cmd_compare)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    coll = bench.add_parser("collectives", help="nccl-tests-style microbenchmark of the collectives")
    coll.add_argument("--nproc", type=int, help="ranks (default: one per GPU, else 4)")
    coll.add_argument("--out", help="folder (default results/bench)")
    coll.add_argument("--max-mb", dest="max_mb", type=float, default=128)
    coll.add_argument("--repeats", type=int, default=5)
    coll.add_argument("--nodes", type=int, default=1, help="emulated nodes the ranks are spread over (needs root)")
    coll.add_argument("--link", default="", help="their link rate, e.g. 1gbit: then α and β are the link's")
    coll.set_defaults(func=cmd_bench_collectives)
    harn = bench.add_parser("harness", help="labkit's ddp against a plain DDP script, alternated")
    harn.add_argument("--nproc", type=int, help="ranks (default: one per GPU, else 4)")
    harn.add_argument("--steps", type=int, default=40)
    harn.add_argument("--timing-warmup", dest="timing_warmup", type=int, default=5,
                      help="steps left out of the timing at the start of each run")
    harn.add_argument("--repeats", type=int, default=3)
    harn.set_defaults(func=cmd_bench_harness)

    sweep = sub.add_parser("sweep", help="methods side by side: interleaved runs (a b c a b c …), K repeats each")
    sweep.add_argument("--strategy", required=True, help="comma-separated methods, each with settings of its own if any, e.g. \"ddp,ddp accumulate=4,ps\" (" +
                       STRATEGY_HELP + ")")
    sweep.add_argument("--repeats", type=int, default=1, help="rounds; each round runs every method once")
    sweep.add_argument("--nproc", help="comma-separated world sizes, e.g. 1,2,4 for scaling "
                                       "(default: each method's own, as `labkit run` picks it)")
    sweep.add_argument("--profile", default="auto")
    sweep.add_argument("--out", metavar="DIR", help="folder for the sweep's runs (default results/runs/)")
    sweep.add_argument("--baseline", metavar="METHOD", default=BASELINE,
                       help=f"vs base: throughput relative to this method in the same setup (default {BASELINE})")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a RunConfig field or method option for every run, e.g. --set max_steps=8")
    sweep.set_defaults(func=cmd_sweep)

    slurm = sub.add_parser("slurm", help="an sbatch script that runs labkit run on several SLURM nodes")
    slurm.add_argument("--nodes", type=int, required=True, help="nodes to allocate (one task, one torchrun each)")
    slurm.add_argument("--gpus-per-node", dest="gpus_per_node", type=int, required=True, help="GPUs (ranks) per node")
    slurm.add_argument("--interface", help="network interface between the nodes (e.g. eth1, ib0)")
    slurm.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node")
    slurm.add_argument("--job-name", dest="job_name", default="labkit")
    slurm.add_argument("--out", metavar="FILE", help="write the script here (default: stdout)")
    slurm.add_argument("run_args", nargs=argparse.REMAINDER, metavar="-- RUN OPTIONS",
                       help="labkit run's options, after --: e.g. -- --strategy ddp --profile imagenet")
    slurm.set_defaults(func=cmd_slurm)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    tiny = data.add_parser("tiny", help="generate the small 10-class JPEG dataset")
    tiny.add_argument("--dst", help="folder (default data/tiny)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_data_tiny)
    prep = data.add_parser("prepare-imagenet", help="official archives / Kaggle copy / extracted tree → data/imagenet")
    prep.add_argument("--src", required=True, help="folder with the archives (or Kaggle's copy, or train/ and val/)")
    prep.add_argument("--dst", default="data/imagenet")
    prep.add_argument("--workers", type=int, default=4, help="parallel class extractions")
    prep.add_argument("--copy", action="store_true", help="copy an extracted input instead of linking it")
    prep.set_defaults(func=cmd_prepare_imagenet)
    check = data.add_parser("verify", help="check an ImageFolder tree (counts, stray folders, --decode)")
    check.add_argument("dir")
    check.add_argument("--decode", action="store_true", help="open every image as RGB")
    check.add_argument("--workers", type=int, default=4)
    check.set_defaults(func=cmd_verify)
    sub_set = data.add_parser("subset", help="a smaller ImageFolder of links, e.g. ImageNet-100")
    sub_set.add_argument("--src", default="data/imagenet")
    sub_set.add_argument("--dst", required=True)
    sub_set.add_argument("--classes", type=int, default=100)
    sub_set.add_argument("--train-per-class", dest="train_per_class", type=int, default=260)
    sub_set.add_argument("--val-per-class", dest="val_per_class", type=int, default=50)
    sub_set.add_argument("--seed", type=int, default=0)
    sub_set.set_defaults(func=cmd_subset)
    kaggle = data.add_parser("download-kaggle", help="fetch Kaggle's copy with the kaggle tool")
    kaggle.add_argument("--dst", default="data/downloads")
    kaggle.set_defaults(func=cmd_download_kaggle)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = run_command(args)
    if argv is None and args.func is cmd_run:  # the `labkit run` program, not a caller in Python (tests)
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """The exit handlers run and the streams are flushed, as at any exit; then os._exit skips the
    interpreter's finalization (freeing torch's modules one by one, libtorch's static destructors:
    ~0.8 s after a run on 2 cores, docs/BENCHMARKS.md), which the kernel does at once."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_command(args) -> int:
    from labkit.lockfile import torch_problem
    from labkit.system import unsupported

    problem = unsupported() or torch_problem()  # Windows, or a torch too old: one line before anything fails
    if problem and args.func is not cmd_machine:  # machine prints it among its rows
        print(f"labkit: error: {problem}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ConfigError as error:
        print(f"labkit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
