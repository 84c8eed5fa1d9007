"""One method, one file: a method describes itself, runs from any file, and the lab
outside labkit/strategies/ never names one. Plus the correctness points found in review."""

import json
import re

import pytest
import torch

from conftest import REPO, labkit_cli, max_param_diff, run_to

F64 = ("augment=false", "batch_size=4", "workers=0", "dtype=float64", "model=simple_cnn", "lr_warmup_steps=0")

MY_AVERAGE = '''
"""A student's method: average every gradient with one all-reduce per tensor."""
import torch.distributed as dist

from labkit.strategies.base import About, Option, Strategy


class MyAverage(Strategy):
    about = About(options=(Option("my_divisor_check", True, "divide by the world size"),))

    def sync_gradients(self, model):
        for p in model.parameters():
            dist.all_reduce(p.grad)
            if self.options.my_divisor_check:
                p.grad /= self.world
'''


# Files allowed to hold such words, and why: the tiny dataset's "ring" is a picture class;
# an exercise names the method it teaches and the solution it is checked against.
NOT_ABOUT_METHODS = ("datasets/tiny.py", "assignments/")


def test_nothing_outside_strategies_names_a_method():
    """The grep of issue 11: a method's name or option appears, as a value in code, only
    in its own file (docstrings may show examples; the baseline is strategies.BASELINE)."""
    import ast

    from labkit.strategies import REGISTRY, load_strategy

    words = set(REGISTRY) | {o.name for name in REGISTRY for o in load_strategy(name).about.options}
    offenders = []
    for path in sorted((REPO / "labkit").rglob("*.py")):
        relative = path.relative_to(REPO / "labkit").as_posix()
        if relative.startswith("strategies/") or relative.startswith(NOT_ABOUT_METHODS):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in words and id(node) not in docstrings:
                offenders.append(f"labkit/{relative}:{node.lineno}: {node.value!r}")
    assert not offenders, "\n".join(offenders)


def test_the_loop_counts_each_op_by_what_gloo_runs():
    """comm_record.step_counts, the one place bytes are counted: a collective is one call, its
    bytes by gloo's algorithm (a reduce-scatter = a whole ring all-reduce); a send and a receive
    posted by one batch_isend_irecv are one message (the ring's exchanges)."""
    from labkit.training.comm_record import Op, step_counts

    def op(name, nbytes, n=4, rank=0, batch=None, root=None):
        return Op(op=name, c10d=name, nbytes=nbytes, dtype="float32", shapes=[], group_size=n, group_rank=rank,
                  root=root, batch=batch)

    counts = step_counts([op("all_reduce", 1000), op("all_reduce", 1000), op("reduce_scatter", 1000),
                          op("all_gather", 1000), op("send", 10, batch=1), op("recv", 10, batch=1),
                          op("recv", 10)])  # an exchange posted together is one message, a receive alone one
    # 2 × 1500 + 1500 (gloo: a whole all-reduce) + 750; the sends and receives exactly
    assert counts == {"bytes_sent": 5260, "bytes_received": 5270, "collectives": 6,
                      "ops": {"all_reduce": [2, 2000], "reduce_scatter": [1, 1000], "all_gather": [1, 1000],
                              "send_recv": [2, 20]}}
    assert step_counts([op("reduce_scatter", 1000)], "nccl")["bytes_sent"] == 750  # NCCL's ring: one pass


def test_the_loop_counts_collectives_on_a_subgroup():
    """hierarchical's calls: the group's own size n; gloo's broadcast is a binomial tree (the
    root sends S to each child), its reduce a ring reduce-scatter then a chunk to the root."""
    from labkit.training.comm_record import Op, step_counts

    def op(name, n, rank, root=None):
        return Op(op=name, c10d=name, nbytes=1000, dtype="float32", shapes=[], group_size=n, group_rank=rank,
                  root=root)

    root = step_counts([op("reduce", 2, 0, root=0), op("all_reduce", 2, 0), op("broadcast", 2, 0, root=0)])
    other = step_counts([op("reduce", 2, 1, root=0), op("broadcast", 2, 1, root=0)])
    assert (root["bytes_sent"], root["collectives"]) == (500 + 1000 + 1000, 3)
    assert (other["bytes_sent"], other["bytes_received"]) == (500 + 500, 500 + 1000)


def test_no_method_or_solution_file_counts_what_it_sends():
    """The loop counts every torch.distributed call (labkit/training/comm_record.py): a method
    file, a solution or an exercise starter holds no counting line (issue 28)."""
    import re

    counting = re.compile(r"\bwire\.(count|all_reduce|reduce|broadcast|reduce_scatter|all_gather|bytes_sent)\b"
                          r"|setup_wire|Wire\.count")
    files = [*(REPO / "labkit" / "strategies").glob("*.py"), *(REPO / "assignments" / "solutions").glob("*.py"),
             *(REPO / "assignments" / "source").rglob("*.ipynb"), REPO / "labkit" / "notebook" / "hints.py",
             REPO / "labkit" / "assignments" / "check.py", REPO / "assignments" / "make_sources.py"]
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in files
                 for n, line in enumerate(path.read_text().splitlines(), 1) if counting.search(line)]
    assert not offenders, "\n".join(offenders)


def test_a_method_reads_its_options_one_way():
    from labkit.profiles import make_config
    from labkit.strategies import load_strategy

    cfg = make_config("cpu", strategy="ps", ps_server_trains="no")
    method = load_strategy("ps")
    assert method(cfg, rank=1, world=4).options.ps_server_trains is False  # a running method
    about = method.about.of(cfg)  # its declaration, from the config
    assert about.options.ps_server_trains is False
    assert about.servers == 1 and cfg.data_ranks == 3 and about.label == "ps (dedicated server)"


# What a student reads in a method file: the contract's own names, no private helper.
OLD_SPELLINGS = ("self.opt.", "_config_error", "count_all_reduce", "reset_counters", "_error(")


def test_students_see_one_spelling_of_the_contract():
    places = [*(REPO / "labkit" / "strategies").glob("*.py"), REPO / "labkit" / "assignments" / "check_worker.py",
              REPO / "docs" / "EXPERIMENT_GUIDE.md", REPO / "assignments" / "make_sources.py",
              *(REPO / "assignments" / "source").rglob("*.ipynb")]
    found = [f"{path.relative_to(REPO)}: {old}" for path in places for old in OLD_SPELLINGS if old in path.read_text()]
    assert not found, "\n".join(found)


def contract_names() -> list[str]:
    """Strategy's public names: its class members and what __init__ sets on an instance."""
    from labkit.config import RunConfig
    from labkit.strategies.base import Strategy

    instance = Strategy(RunConfig(), rank=0, world=1)
    return [name for name in [*vars(Strategy), *vars(instance)] if not name.startswith("_")]


def test_the_contract_is_read_in_one_screen():
    """Issue 28: at most 15 public names: the hooks, the run's facts, and one declaration."""
    names = contract_names()
    assert len(names) <= 15, names


def test_the_guide_says_every_name_of_the_contract():
    """docs/EXPERIMENT_GUIDE.md's "Adding a method" names each public name of Strategy and each
    field of About (and says how many names Strategy has): a name added without a word there fails."""
    from labkit.strategies.base import About

    guide = (REPO / "docs" / "EXPERIMENT_GUIDE.md").read_text()
    section = guide[guide.index("## Adding a method"):guide.index("### Counted from what torch ran")]
    names = contract_names()
    missing = [name for name in [*names, *About.__dataclass_fields__]
               if not re.search(rf"`[^`]*\b{name}\b[^`]*`", section)]  # in a code span
    assert not missing, f"Adding a method does not name {missing}"
    assert f"{len(names)} public names" in section, f"say the contract's size: {len(names)} public names"


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    """A method written outside the repository, as a student would."""
    folder = tmp_path_factory.mktemp("student")  # /tmp/..., not under the repo
    (folder / "my_average.py").write_text(MY_AVERAGE)
    return folder / "my_average.py"


@pytest.fixture(scope="module")
def ddp_f64(tmp_path_factory):
    return run_to(tmp_path_factory.mktemp("ref") / "ddp", "ddp", 4, *F64, max_steps=3)


def test_a_strategy_from_any_file_runs_through_the_cli(student_file, ddp_f64, tmp_path):
    result, state = run_to(tmp_path / "mine", f"{student_file}:MyAverage", 4, *F64, max_steps=3, strategy_name="MyAverage")
    assert max_param_diff(ddp_f64[1], state) < 1e-9
    assert result["method"] == "MyAverage" and result["config"]["options"] == {"my_divisor_check": True}
    # its own option is settable with --set, and really changes what it does
    _, wrong = run_to(tmp_path / "undivided", f"{student_file}:MyAverage", 4, *F64, "my_divisor_check=false",
                      max_steps=3, strategy_name="MyAverage")
    assert max_param_diff(ddp_f64[1], wrong) > 1e-4


@pytest.mark.slow  # the CLI test runs the same file; test_launch covers labkit.launch
def test_a_strategy_from_any_file_runs_through_launch(student_file, ddp_f64, tmp_path):
    import labkit

    job = labkit.launch(profile="cpu", strategy=f"{student_file}:MyAverage", nproc=4, max_steps=3,
                        out_dir=str(tmp_path / "launched"), calibration_steps=0,
                        augment=False, batch_size=4, workers=0, dtype="float64", model="simple_cnn", lr_warmup_steps=0)
    assert job.result()["status"] == "ok"
    state = torch.load(tmp_path / "launched" / "checkpoint.pt", weights_only=True)
    assert max_param_diff(ddp_f64[1], state) < 1e-9


BAD_FILES = [
    (None, "MyAverage", "not found"),
    ("def broken(:\n", "MyAverage", ":1: syntax error"),
    (MY_AVERAGE, "Missing", "has no class Missing; it defines MyAverage"),
    ("class NotAStrategy:\n    pass\n", "NotAStrategy", "NotAStrategy is not a Strategy subclass"),
    (MY_AVERAGE.replace('"my_divisor_check"', '"lr"'), "MyAverage", "declares option(s) ['lr'] that the lab already uses"),
    ("import does_not_exist\n", "X", "importing it failed: ModuleNotFoundError"),
    ("from labkit.strategies.base import Option, Strategy\n\n\nclass Mine(Strategy):\n"
     "    options = (Option('my_size', 1),)\n", "Mine",
     "Mine sets options on the class; a method says what it is in one declaration: about = About(options=...)"),
]


@pytest.mark.parametrize("text,name,message", BAD_FILES, ids=[m for _, _, m in BAD_FILES])
def test_a_bad_strategy_file_is_one_clear_line(text, name, message, tmp_path):
    path = tmp_path / "mine.py"
    if text is not None:
        path.write_text(text)
    out = tmp_path / "run"
    proc = labkit_cli("run", "--strategy", f"{path}:{name}", "--profile", "cpu", "--out", out, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0] and lines[0].startswith("labkit: error:"), \
        proc.stderr
    assert not out.exists()  # nothing half-written


def test_strategies_lists_each_method_and_its_options():
    proc = labkit_cli("strategies")
    assert "--set bucket_mb=25.0" in proc.stdout and "--set ps_server_trains=True" in proc.stdout
    assert "--set powersgd_rank=1" in proc.stdout and proc.stdout.count("\n") >= 9


# -- correctness found in review --------------------------------------------------

def test_ps_sharded_keeps_every_ranks_momentum_across_a_restart(tmp_path):
    """Each rank steps its own shard optimizer: a restart must bring back every rank's
    momentum, or the resumed run drifts from the uninterrupted one."""
    _, straight = run_to(tmp_path / "straight", "ps_sharded", 4, *F64, max_steps=6)
    sets = [*F64, "checkpoint_every=3", "fault=1:5:kill", "max_restarts=1"]
    result, restarted = run_to(tmp_path / "restarted", "ps_sharded", 4, *sets, max_steps=6)
    assert len(result["steps"]) == 6
    assert max_param_diff(straight, restarted) < 1e-9
    assert not old_torch_names(tmp_path), old_torch_names(tmp_path)  # its reduce-scatter and all-gather


def old_torch_names(folder) -> list[str]:
    """The FutureWarnings torch.distributed wrote into the rank logs under `folder`: a name
    the lab teaches that torch has deprecated (reduce_scatter_tensor, all_gather_into_tensor)."""
    return [f"{log}: {line}" for log in sorted(folder.rglob("*.log")) for line in log.read_text().splitlines()
            if "FutureWarning" in line and "distributed" in line]


def test_a_diverged_run_fails_and_names_the_step(tmp_path):
    out = tmp_path / "diverged"
    proc = labkit_cli("run", "--strategy", "allreduce", "--profile", "cpu", "--nproc", "2", "--max-steps", "8",
                      "--out", out, "--set", "lr=1e12", "--set", "calibration_steps=0", "--set", "model=simple_cnn",
                      check=False)
    result = json.loads((out / "result.json").read_text())
    assert proc.returncode != 0 and result["status"] == "failed"
    assert re.search(r"loss became (nan|inf) at step \d+", result["failure"]["exception"]), result["failure"]

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    lines = (out / "progress.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line, parse_constant=strict) for line in lines)  # the display never freezes


OVERLAP_WITH_UNUSED = '''
import torch
from labkit.strategies.overlap import Overlap


class OverlapWithUnused(Overlap):
    def prepare(self, model, optimizer):
        model.unused_weight = torch.nn.Parameter(torch.zeros(3, dtype=next(model.parameters()).dtype))
        return super().prepare(model, optimizer)
'''


def test_overlap_names_a_parameter_that_got_no_gradient(tmp_path):
    path = tmp_path / "unused.py"
    path.write_text(OVERLAP_WITH_UNUSED)
    out = tmp_path / "run"
    labkit_cli("run", "--strategy", f"{path}:OverlapWithUnused", "--profile", "cpu", "--nproc", "2", "--max-steps", "2",
               "--out", out, "--set", "calibration_steps=0", "--set", "model=simple_cnn", check=False)
    failure = json.loads((out / "result.json").read_text())["failure"]
    assert "unused_weight received no gradient" in failure["exception"]


def test_step_checkpoints_append_records_instead_of_rewriting_them(tmp_path):
    _, checkpoint = run_to(tmp_path / "ckpt", "allreduce", 2, "model=simple_cnn", "checkpoint_every=1", max_steps=5)
    lines = (tmp_path / "ckpt" / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]  # each record written once
    assert "steps" not in checkpoint["state"] and checkpoint["state"]["steps_saved"] == 5
