"""`python -m labkit.jobs.torchrun ARGS`: torchrun, with its stores listening only where they are told.

torchrun's agent runs two key-value stores (torch's TCPStore): the rendezvous store and
the store its ranks share. Neither has a password: whoever reaches the port can join the
rendezvous or overwrite keys. And a TCPStore server listens on every interface (`::`),
whatever host name it is given. TCPStore also accepts a socket that is already listening
(`master_listen_fd`): so here, every store server gets one bound to the address it was
given — 127.0.0.1 for a one-node job (`--rdzv-endpoint=127.0.0.1:0 --local-addr=127.0.0.1`),
the chosen interface's address for a job on several nodes.

When that address is loopback the ranks' own sockets stay there too: gloo and NCCL would
otherwise pick the interface the host name resolves to.

torchrun's own arguments, as labkit.jobs.command writes them (the one place that does). This
module imports only the standard library at the top: `main` starts the ranks' forkserver
before importing torch itself, so the two imports run side by side.
"""

import atexit
import gc
import ipaddress
import os
import socket
import sys


def bind_stores() -> None:
    """From now on every TCPStore server listens on the host name it is given, only."""
    import torch.distributed as dist

    class BoundTCPStore(dist.TCPStore):
        def __init__(self, host_name, port, world_size=None, is_master=False, *args, master_listen_fd=None, **kwargs):
            if is_master and master_listen_fd is None:
                family, kind, _, _, address = socket.getaddrinfo(host_name, port, type=socket.SOCK_STREAM)[0]
                listener = socket.socket(family, kind)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(address)
                listener.listen(1024)
                port = listener.getsockname()[1]   # the real port when asked for any (0)
                master_listen_fd = listener.detach()  # the store owns the socket from now on
            super().__init__(host_name, port, world_size, is_master, *args, master_listen_fd=master_listen_fd, **kwargs)

    dist.TCPStore = BoundTCPStore  # clients are unchanged: only a server (is_master) binds


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def local_addr(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(("--local-addr=", "--local_addr=")):
            return arg.split("=", 1)[1]
        if arg in ("--local-addr", "--local_addr") and i + 1 < len(argv):
            return argv[i + 1]
    return None


def main() -> None:
    # No garbage collection while torch is imported: its passes over the hundreds of thousands
    # of new objects (none of them garbage) are ~10 % of an import's CPU on a run's critical path.
    gc.disable()
    # The ranks use the agent's store (bound below) rather than hosting one of their own.
    os.environ.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    from labkit.jobs.processes import die_with_parent

    # We die with whoever launched us (a notebook's kernel, the check); our SIGTERM handling
    # stops the ranks. The forkserver dies with us (forkserver_init), the ranks with it.
    die_with_parent(int(os.environ.get("LABKIT_LAUNCHER_PID", os.getppid())))
    os.environ["LABKIT_TORCHRUN_PID"] = str(os.getpid())
    if is_loopback(local_addr(sys.argv[1:]) or ""):
        from labkit.system import loopback_interface

        loopback = loopback_interface()  # lo on Linux, lo0 on macOS
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)  # inherited by the ranks
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    start_forkserver(sys.argv[1:])  # after the environment above, which the ranks inherit from it
    # Before torch.distributed.run is imported: its rendezvous module keeps its own reference.
    bind_stores()
    exit_now(launch_and_report(sys.argv[1:]))


def exit_now(code: int) -> None:
    """End torchrun the moment its job is done. The exit handlers run and the streams are
    flushed as at any exit; then os._exit skips the interpreter's finalization — freeing torch's
    modules one by one and running libtorch's (and its CUDA libraries') static destructors,
    ~0.5 s of a short run here (docs/BENCHMARKS.md) — which the kernel does at once for an
    ended process. Nothing is left to write: the ranks have ended, failures.json is written."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch_and_report(argv: list[str]) -> int:
    """torchrun's own `run`, through torch's launcher API (`elastic_launch`), so that a failure
    arrives as data: `ChildFailedError.failures`, rank → exit code, error file, time. They go
    to $LABKIT_FAILURES as JSON (labkit.jobs.failures reads it); the usual report is printed too."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    parsed = parse_args(argv)
    wait_at_gate()  # before config_from_args: it makes the log folder, and a refused run leaves none
    config, entrypoint, args = config_from_args(parsed)
    gc.freeze()  # what is imported stays: later passes skip it (torchrun runs as long as its job)
    gc.enable()
    try:
        elastic_launch(config=config, entrypoint=entrypoint)(*args)
    except ChildFailedError as failed:
        write_failures(failed.failures)
        print(failed.format_msg(), file=sys.stderr, flush=True)
        return 1
    return 0


def wait_at_gate() -> None:
    """Started ahead of its job (labkit.jobs.command.Prestarted): wait here, imports done and
    nothing written, until the process that started us has accepted the run's config. It then
    sends "go" with the job's log (our stdout and stderr from now on) and its run folder's lock,
    which we hold till we exit; a gate closed without a word means the config was refused: end
    quietly."""
    fd = os.environ.pop("LABKIT_GATE_FD", None)
    if fd is None:
        return
    with socket.socket(fileno=int(fd)) as gate:
        message, fds, _, _ = socket.recv_fds(gate, 16, 8)
    if message != b"go":
        os._exit(0)
    log, *kept = fds  # kept: the run folder's lock, open till we exit (as pass_fds keeps it)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def write_failures(failures: dict) -> None:
    path = os.environ.get("LABKIT_FAILURES")
    if not path:
        return
    rows = [{"rank": rank, "local_rank": f.local_rank, "pid": f.pid, "exit_code": f.exitcode,
             "signal": f.signal_name() if f.exitcode < 0 else None, "timestamp": f.timestamp,
             "error_file": f.error_file if f.error_file and os.path.isfile(f.error_file) else None}
            for rank, f in sorted(failures.items())]
    from labkit.files import write_json  # atomic: a reader never sees half a file

    write_json(path, rows)


def start_forkserver(argv: list[str]) -> None:
    """Ranks started by torchrun's forkserver (`--start-method=forkserver --run-path
    .../rank.py MODULE`) are forked from one clean process that has imported MODULE (and with
    it torch and torchvision) once, rather than each rank importing them again. Started now,
    its imports overlap torchrun's own start and rendezvous.

    Why a forkserver and not a fork of torchrun itself: torchrun has threads (its store
    server, the rendezvous keep-alive, its log readers). A fork copies only the forking
    thread, so a lock one of the others held at that instant stays held in the child forever:
    a rank forked from torchrun hung before joining its process group, once in a CI run.
    The forkserver is a fresh single-threaded interpreter that only imports and forks."""
    if "--start-method=forkserver" not in argv or "--run-path" not in argv:
        return  # only this spelling, the one labkit writes: others run as torchrun would
    script, module = argv[argv.index("--run-path") + 1:][:2]
    if os.path.basename(script) == "rank.py":
        from multiprocessing import forkserver

        # forkserver_init: it dies with us; torch.distributed.run: each rank unpickles its
        # entry point from there; MODULE: rank.py runs it afresh, as __main__.
        forkserver.set_forkserver_preload(["labkit.jobs.forkserver_init", "torch.distributed.run", module])
        forkserver.ensure_running()  # from the main thread: PDEATHSIG follows the thread that forked


if __name__ == "__main__":
    main()
