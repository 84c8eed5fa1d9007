"""The few torch internals the lab leans on, each checked on its own (issue 28, item 5), so a
torch upgrade that moves one fails here, by name, rather than somewhere deep inside a run:

- `torch.distributed.run.parse_args` / `config_from_args` (labkit/jobs/torchrun.py): a
  prestarted torchrun parses, waits at its gate, then configures — config_from_args makes the
  log folder, which is why the gate comes before it.
- `dist.TCPStore` subclassed with `master_listen_fd` (torchrun.bind_stores): a store server
  listens on the host it is given only.
- `ProcessGroup.register_pre_hook` and its arguments (training/collective_log.py,
  training/comm_record.py), and torch's registry of process groups (comm_record.process_groups).
- `DistributedDataParallel._get_ddp_logging_data()["num_buckets_reduced"]` where a method
  still reads it (strategies/ddp.py).
"""

import json
import subprocess
import sys

import psutil
import torch.distributed as dist

from conftest import REPO


def test_torchrun_parses_then_configures_and_configuring_makes_the_log_folder(tmp_path):
    from torch.distributed.run import config_from_args, parse_args

    logs = tmp_path / "logs"
    parsed = parse_args(["--nproc-per-node=2", f"--log-dir={logs}", "--standalone", "x.py", "a"])
    assert not logs.exists(), "parse_args wrote something: the prestart gate may sit after it no longer"
    config, entrypoint, args = config_from_args(parsed)
    assert (config.nproc_per_node, entrypoint, list(args)) == (2, sys.executable, ["-u", "x.py", "a"])
    assert logs.is_dir(), "config_from_args no longer makes the log folder: the gate's comment in torchrun.py is stale"


def test_a_bound_store_listens_on_its_host_only():
    from labkit.jobs import torchrun

    original = dist.TCPStore
    try:
        torchrun.bind_stores()
        assert dist.TCPStore is not original
        store = dist.TCPStore("127.0.0.1", 0, 1, True, wait_for_workers=False)
        store.set("k", "v")
        listening = [c.laddr for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == store.port]
        assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
        assert store.get("k") == b"v"
    finally:
        dist.TCPStore = original


WORLD_OF_ONE = r"""
import json, os, torch, torch.distributed as dist
from labkit.training.collective_log import CollectiveLog, read_collectives
from labkit.training.comm_record import CommRecord, bytes_sent, process_groups
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
log = CollectiveLog("collectives-0.jsonl", rank=0)
sub = dist.new_group([0])
groups = process_groups()
with CommRecord() as record:
    dist.all_reduce(torch.ones(10))
    dist.broadcast(torch.ones(3, dtype=torch.float64), src=0, group=sub)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
for _ in range(2):
    model(torch.ones(3, 4)).sum().backward()
print(json.dumps({"ops": [(o.op, o.nbytes, o.group_size, o.root) for o in record.ops],
                  "groups": [dist.group.WORLD in groups, sub in groups, len(groups)],
                  "bytes": bytes_sent(record.ops[0]),
                  "logged": [(c["op"], c["bytes"]) for c in read_collectives("collectives-0.jsonl")["collectives"]],
                  "buckets": model._get_ddp_logging_data().get("num_buckets_reduced")}))
dist.destroy_process_group()
"""


def test_a_collective_is_seen_by_the_pre_hooks_and_ddps_log(tmp_path):
    done = subprocess.run([sys.executable, "-c", WORLD_OF_ONE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ops"] == [["all_reduce", 40, 1, None], ["broadcast", 24, 1, 0]]  # each group's pre-hook
    assert seen["groups"] == [True, True, 2]  # torch's registry: the world and the subgroup
    assert seen["bytes"] == 0  # a group of one sends nothing
    assert ["all_reduce", 40] in [list(x) for x in seen["logged"]]  # the process group's pre-hook
    assert seen["buckets"] == 1  # DDP's own log of its last iteration
