"""An sbatch script that runs `labkit run` on several SLURM nodes (`labkit slurm`).

The pattern is torchtitan's multinode_trainer.slurm (github.com/pytorch/torchtitan): one
SLURM task per node, each starting one torchrun agent for that node's GPUs; the first
node of the allocation (`scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p`) hosts
torchrun's c10d rendezvous; `srun --kill-on-bad-exit=1` stops every node when one fails,
instead of leaving the others waiting at a collective. Here each task runs `labkit run`
with the multi-node flags, so a SLURM job is the same run as one started by hand on each
node (docs/ENVIRONMENT_SETUP.md, "Several nodes").

Two details a hand-written script often gets wrong, and this one does not:
- `$SLURM_NODEID` differs per task, so it must be expanded by each task's shell, not by the
  batch script (which runs on the first node only): the command runs under `bash -c '…'`.
- every node must give the same run name: torchrun's rendezvous id is the run's name, and
  a default name holds the start time. The script names the run after the SLURM job.

Pure text: nothing here talks to SLURM. Bad input raises ConfigError (one line).
"""

from __future__ import annotations

import re
import shlex

from labkit.errors import ConfigError

# What the script sets itself, per node: a run option that sets it too would contradict it.
SET_BY_SCRIPT = ("--nnodes", "--node-rank", "--rdzv-endpoint", "--nproc", "--interface")
SET_KEYS_BY_SCRIPT = ("nodes", "nnodes", "node_rank", "rdzv_endpoint", "nproc", "interface", "link")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_run_args(run_args) -> None:
    """Refuse a `labkit run` option the script sets itself (one line saying which)."""
    for i, arg in enumerate(run_args):
        flag = arg.split("=", 1)[0]
        if flag in SET_BY_SCRIPT:
            raise ConfigError(f"{flag}: the script sets it on every node (from labkit slurm's --nodes, "
                              f"--gpus-per-node, --interface); leave it out")
        if arg == "--set" and i + 1 < len(run_args) and run_args[i + 1].split("=", 1)[0] in SET_KEYS_BY_SCRIPT:
            raise ConfigError(f"--set {run_args[i + 1]}: the script sets the job's nodes and ranks; leave it out")


def sbatch_script(nodes: int, gpus_per_node: int, run_args=(), interface: str = "", port: int = 29500,
                  job_name: str = "labkit") -> str:
    """The text of an sbatch script: `nodes` nodes × `gpus_per_node` ranks, each node running
    `labkit run` with `run_args` (e.g. ["--strategy", "ddp", "--profile", "imagenet"])."""
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1 (got {nodes})")
    if gpus_per_node < 1:
        raise ConfigError(f"--gpus-per-node must be at least 1 (got {gpus_per_node}): one rank per GPU")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port (1 … 65535)")
    if not NAME.fullmatch(job_name):
        raise ConfigError(f"job name '{job_name}' may hold only letters, digits, '.', '_' and '-'")
    if interface and not re.fullmatch(r"[A-Za-z0-9._:-]+", interface):
        raise ConfigError(f"'{interface}' is not a network interface name (e.g. eth1, ib0)")
    run_args = list(run_args)
    check_run_args(run_args)
    quoted = " ".join(shlex.quote(a) for a in run_args)
    if "--name" not in run_args and "--resume" not in run_args:  # the batch shell expands it: one name for all
        quoted += f' --name "{job_name}-$SLURM_JOB_ID"'
    # sed, not head: head exits after one line, the writer gets SIGPIPE, and pipefail fails the job
    head = ['HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)']
    if interface:  # the store listens on the head's address on this interface only: connect to that one
        head += [f"# the rendezvous store listens on the head node's {interface} address only: ask the head for it",
                 f"HEAD=$(srun --nodes=1 --ntasks=1 -w \"$HEAD\" ip -4 -o addr show dev {interface} "
                 "| awk '{print $4}' | cut -d/ -f1 | sed -n 1p)"]
    per_node = (f'exec .venv/bin/labkit run --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" \\\n    '
                f'--rdzv-endpoint "$HEAD:{port}" --nproc $((SLURM_NNODES * {gpus_per_node}))'
                + (f" --interface {interface}" if interface else "") + ' "$@"')
    return "\n".join([
        "#!/bin/bash",
        f"# labkit on {nodes} node(s) × {gpus_per_node} GPU(s), written by `labkit slurm`; submit it with sbatch.",
        "# The pattern of torchtitan's multinode_trainer.slurm: one task per node, each running one",
        "# torchrun agent (labkit run) for its node's GPUs; the first node hosts the c10d rendezvous.",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        "#SBATCH --output=%x-%j.out",
        "",
        "set -euo pipefail",
        "# sbatch starts in the folder it was submitted from: submit it from the labkit checkout",
        *head,
        "export HEAD",
        f'echo "labkit: {nodes} node(s), rendezvous on $HEAD:{port}"',
        "",
        "# --kill-on-bad-exit=1: one node failing stops the others (they would wait at a collective).",
        "# Single quotes: each task's own shell expands $SLURM_NODEID (0 on the first node, 1, ...).",
        f"srun --kill-on-bad-exit=1 bash -c '{per_node}' \\\n    labkit {quoted.strip()}",
        "",
    ])
