"""`labkit slurm`: the sbatch script for a configuration, word for word; what each node runs
when SLURM starts it (scontrol, srun and ip faked on PATH, so no cluster is needed); and every
bad input refused in one line."""

import contextlib
import io
import os
import subprocess

import pytest

from labkit.jobs.slurm import sbatch_script

EXPECTED = r"""#!/bin/bash
# labkit on 2 node(s) × 4 GPU(s), written by `labkit slurm`; submit it with sbatch.
# The pattern of torchtitan's multinode_trainer.slurm: one task per node, each running one
# torchrun agent (labkit run) for its node's GPUs; the first node hosts the c10d rendezvous.
#SBATCH --job-name=labkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --output=%x-%j.out

set -euo pipefail
# sbatch starts in the folder it was submitted from: submit it from the labkit checkout
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
# the rendezvous store listens on the head node's eth1 address only: ask the head for it
HEAD=$(srun --nodes=1 --ntasks=1 -w "$HEAD" ip -4 -o addr show dev eth1 | awk '{print $4}' | cut -d/ -f1 | sed -n 1p)
export HEAD
echo "labkit: 2 node(s), rendezvous on $HEAD:29500"

# --kill-on-bad-exit=1: one node failing stops the others (they would wait at a collective).
# Single quotes: each task's own shell expands $SLURM_NODEID (0 on the first node, 1, ...).
srun --kill-on-bad-exit=1 bash -c 'exec .venv/bin/labkit run --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" \
    --rdzv-endpoint "$HEAD:29500" --nproc $((SLURM_NNODES * 4)) --interface eth1 "$@"' \
    labkit --strategy ddp --profile imagenet --epochs 1 --set 'note=two words' --name "labkit-$SLURM_JOB_ID"
"""
RUN = ["--strategy", "ddp", "--profile", "imagenet", "--epochs", "1", "--set", "note=two words"]


def test_the_script_for_two_nodes_of_four_gpus():
    assert sbatch_script(2, 4, RUN, interface="eth1") == EXPECTED


def test_without_an_interface_the_head_is_its_host_name_and_a_given_name_is_kept():
    text = sbatch_script(3, 8, ["--strategy", "ddp", "--name", "mine"], port=29600, job_name="big")
    assert "#SBATCH --nodes=3\n" in text and "#SBATCH --gpus-per-node=8\n" in text and "#SBATCH --job-name=big\n" in text
    assert "ip -4" not in text and "--interface" not in text
    assert '--rdzv-endpoint "$HEAD:29600" --nproc $((SLURM_NNODES * 8)) "$@"' in text
    assert text.endswith("labkit --strategy ddp --name mine\n")


FAKES = {  # what a SLURM allocation of two nodes answers, just enough for the script
    "scontrol": 'printf "gpu-a\\ngpu-b\\n"',
    "ip": 'echo "3: eth1    inet 10.0.0.7/24 brd 10.0.0.255 scope global eth1"',
    # `srun --nodes=1 --ntasks=1 -w HOST CMD` runs CMD once; `srun --kill-on-bad-exit=1 CMD` once per node
    "srun": 'if [ "$1" = --nodes=1 ]; then shift 4; exec "$@"; fi\n'
            'shift; for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" || exit 1; done',
}


def test_each_node_runs_labkit_with_its_own_node_rank(tmp_path):
    """The script run by bash, as sbatch would: node R gets --node-rank R (expanded by its own
    task's shell), every node the same endpoint (the head's eth1 address) and the same run name."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    fakes = {**{bin_dir / name: body for name, body in FAKES.items()},
             tmp_path / ".venv" / "bin" / "labkit": 'printf "%s\\n" "$@" > "node-$SLURM_NODEID.args"'}
    for path, body in fakes.items():
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    (tmp_path / "job.sbatch").write_text(EXPECTED)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242"}
    proc = subprocess.run(["bash", "job.sbatch"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "labkit: 2 node(s), rendezvous on 10.0.0.7:29500\n"
    for node in (0, 1):
        args = (tmp_path / f"node-{node}.args").read_text().splitlines()
        assert args == ["run", "--nnodes", "2", "--node-rank", str(node), "--rdzv-endpoint", "10.0.0.7:29500",
                        "--nproc", "8", "--interface", "eth1", *RUN, "--name", "labkit-4242"]
    assert not (tmp_path / "node-2.args").exists()


def labkit(*args):
    """`labkit ARGS` in this process → (exit code, stdout, stderr)."""
    from labkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_the_command_writes_the_script_to_stdout_or_a_file(tmp_path):
    code, out, _ = labkit("slurm", "--nodes", "2", "--gpus-per-node", "4", "--interface", "eth1", "--", *RUN)
    assert code == 0 and out == EXPECTED
    script = tmp_path / "job.sbatch"
    code, out, err = labkit("slurm", "--nodes", "2", "--gpus-per-node", "4", "--interface", "eth1",
                            "--out", str(script), "--", *RUN)
    assert code == 0 and out == "" and script.read_text() == EXPECTED and f"sbatch {script}" in err


@pytest.mark.parametrize("args,message", [
    (["--nodes", "0", "--gpus-per-node", "4"], "--nodes must be at least 1 (got 0)"),
    (["--nodes", "2", "--gpus-per-node", "0"], "--gpus-per-node must be at least 1 (got 0)"),
    (["--nodes", "2", "--gpus-per-node", "-1"], "--gpus-per-node must be at least 1 (got -1)"),
    (["--nodes", "2", "--gpus-per-node", "4", "--port", "70000"], "--port 70000 is not a TCP port"),
    (["--nodes", "2", "--gpus-per-node", "4", "--interface", "eth1;reboot"], "is not a network interface name"),
    (["--nodes", "2", "--gpus-per-node", "4", "--", "--strategy", "ddp", "--nproc", "8"], "--nproc: the script sets"),
    (["--nodes", "2", "--gpus-per-node", "4", "--", "--strategy", "ddp", "--node-rank=1"], "--node-rank: the script"),
    (["--nodes", "2", "--gpus-per-node", "4", "--", "--strategy", "ddp", "--set", "nodes=4"], "--set nodes=4: the"),
    (["--nodes", "2", "--gpus-per-node", "4", "--", "--strategy", "ddp", "--bogus"], "labkit run takes no --bogus"),
    (["--nodes", "2", "--gpus-per-node", "4"], "give labkit run's options after --"),
], ids=["nodes-0", "gpus-0", "gpus-negative", "port", "interface", "nproc", "node-rank", "set-nodes", "typo",
        "no-strategy"])
def test_bad_input_is_one_line(args, message):
    code, out, err = labkit("slurm", *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("labkit: error: ") and message in err, err
