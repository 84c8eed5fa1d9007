"""The course assignments, graded the way an instructor grades them: nbgrader's own
commands on a copy of the course folder, the instant check underneath (real torchrun).

One module-scoped course does the expensive part once: generate the release from the
sources, submit the solutions, the untouched release and three planted bugs, and
autograde everything; the tests then read nbgrader's gradebook and the graded notebooks.
To keep the suite short, the course copy runs the visible check on 2 ranks only (the
hidden cases still run on 3, 4 or 5); `labkit check-strategy` below covers the rest.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from conftest import REPO, named_semaphores, processes_of

COURSE = REPO / "assignments"
EXERCISES = sorted(p.name for p in (COURSE / "source").iterdir() if (p / f"{p.name}.ipynb").exists())
# `make test` (CI) autogrades two solutions (the ring; FSDP by hand, the newest), the untouched release
# and the planted bugs; `make test-all` the solutions of all seven.
GRADED = EXERCISES if os.environ.get("LABKIT_TEST_ALL") else ["ex4_ring", "ex7_fsdp"]
# student → (exercise, text of the solution to replace, the bug, what the check must say:
# the first message is the bug's signature, which no other bug's report may contain)
BUGS = {
    "bug_average": ("ex1_allreduce", "            grad /= self.world\n", "",
                    ["summed, not averaged", "parameters differ from DDP after step 1"]),
    "bug_ring": ("ex4_ring", "chunks[(rank - step + 1) % world], chunks[(rank - step) % world]",
                 "chunks[(rank - step) % world], chunks[(rank - step - 1) % world]",
                 ["parameters differ from DDP after step 1", "in layer"]),
    "bug_ps": ("ex5_ps", "for dst in range(1, self.world)]", "for dst in range(1, self.world - 1)]",
               ["deadlock: no rank made progress for 10 s", "is stuck in step 1, sync_parameters",
                "dist.recv(flat, src=SERVER)"]),
    # the shard length rounded down: caught by the visible check's model (517 values: no world size divides it)
    "bug_padding": ("ex6_ps_sharded", "math.ceil(total / self.world)", "total // self.world",
                    ["the flat buffer holds 516 values but the 6 tensors need 517", "in step 1, sync_parameters",
                     "my_sharded.py line"]),
    # a layer's gradients never reduce-scattered: each rank steps its shard with its own gradient
    "bug_fsdp_local": ("ex7_fsdp", "        dist.reduce_scatter_single(shard.grad, grads, op=dist.ReduceOp.SUM)\n",
                       "        shard.grad.copy_(grads.chunk(self.world)[self.rank])\n",
                       ["every layer's gradients go through a reduce-scatter", "a gradient was left local",
                        "parameters differ from DDP after step 1",
                        "moved by one rank's own gradient, not the average over the ranks"]),
}
VISIBLE_CATCHES = {"bug_padding", "bug_fsdp_local"}  # bugs the visible check itself must catch (not only the hidden tests)


def nbgrader(root: Path, env: dict, *args, timeout=3600) -> str:
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def submit(root: Path, student: str, exercise: str, nb) -> None:
    folder = root / "submitted" / student / exercise
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{exercise}.ipynb")


def solution_cell(nb):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code")


def answer_cell(nb):
    """The written answers: a markdown cell nbgrader leaves to be graded by hand."""
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "markdown")


def leftovers(root: Path) -> list[str]:
    """Processes of this course's temporary folder (the check's torchrun and ranks)."""
    found = []
    for proc in processes_of(root):
        try:
            found.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(COURSE / "source", root / "source")
    for exercise in EXERCISES:  # the visible check on 2 ranks only (see the docstring)
        path = root / "source" / exercise / f"{exercise}.ipynb"
        nb = nbformat.read(path, 4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert "worlds = (2, 3, 4)" in cell.source
        cell.source = cell.source.replace("worlds = (2, 3, 4)", "worlds = (2,)")
        nbformat.write(nb, path)
    shutil.copy(COURSE / "nbgrader_config.py", root)
    (root / "tmp").mkdir()
    # nbgrader calls `alembic` from its own bin folder; TMPDIR puts the check's ranks where leftovers() looks
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TMPDIR": str(root / "tmp")}
    (root / "semaphores-before.txt").write_text("\n".join(sorted(named_semaphores())))
    started = time.perf_counter()
    nbgrader(root, env, "generate_assignment", "*", "--force")
    for exercise in EXERCISES:
        if exercise in GRADED:  # a solution's autograde runs real checks: the longest part
            submit(root, "solution", exercise, nbformat.read(root / "source" / exercise / f"{exercise}.ipynb", 4))
        submit(root, "untouched", exercise, nbformat.read(root / "release" / exercise / f"{exercise}.ipynb", 4))
    for student, (exercise, old, new, _) in BUGS.items():
        nb = nbformat.read(root / "source" / exercise / f"{exercise}.ipynb", 4)
        cell = solution_cell(nb)
        assert old in cell.source, f"the planted bug for {student} no longer matches the solution of {exercise}"
        cell.source = cell.source.replace(old, new)
        submit(root, student, exercise, nb)
    nbgrader(root, env, "autograde", "*", "--create")
    print(f"generate + autograde of {len(EXERCISES)} exercises × {2 + len(BUGS)} students: "
          f"{time.perf_counter() - started:.0f} s")
    return root


def scores(root: Path, student: str) -> dict:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        return {s.assignment.name: (s.score, s.max_score) for s in gradebook.student_submissions(student)}


def graded_errors(root: Path, student: str, exercise: str, grade_id: str = "") -> str:
    """The errors in a graded notebook's outputs (of the cells whose grade id ends with `grade_id`)."""
    nb = json.loads((root / "autograded" / student / exercise / f"{exercise}.ipynb").read_text())
    return "\n".join("\n".join(o.get("traceback", [])) + o.get("evalue", "")
                     for c in nb["cells"] if c["cell_type"] == "code"
                     and c["metadata"].get("nbgrader", {}).get("grade_id", "").endswith(grade_id)
                     for o in c.get("outputs", []) if o["output_type"] == "error")


def graded_outputs(root: Path, student: str, exercise: str) -> str:
    nb = nbformat.read(root / "autograded" / student / exercise / f"{exercise}.ipynb", 4)  # texts joined
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") + o.get("evalue", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_there_are_seven_exercises_with_points():
    assert EXERCISES == ["ex1_allreduce", "ex2_bucketed", "ex3_overlap", "ex4_ring", "ex5_ps", "ex6_ps_sharded",
                         "ex7_fsdp"]
    for exercise in EXERCISES:
        nb = nbformat.read(COURSE / "source" / exercise / f"{exercise}.ipynb", 4)
        cells = [c.metadata.get("nbgrader", {}) for c in nb.cells]
        assert sum(c.get("points", 0) for c in cells if c.get("grade")) == 10, exercise
        answers = answer_cell(nb).metadata["nbgrader"]  # written answers, graded by hand in the formgrader
        assert answers["grade"] and answers["points"] > 0 and not answers["locked"], exercise
        assert any("### BEGIN HIDDEN TESTS" in c.source for c in nb.cells), exercise
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{exercise}: commit it stripped"


def test_release_never_contains_a_solution(course):
    for exercise in EXERCISES:
        source = nbformat.read(course / "source" / exercise / f"{exercise}.ipynb", 4)
        release = (course / "release" / exercise / f"{exercise}.ipynb").read_text()
        assert "BEGIN SOLUTION" not in release and "HIDDEN TESTS" not in release, exercise
        assert "raise NotImplementedError()" in release, exercise
        parts = solution_cell(source).source.split("### BEGIN SOLUTION")
        regions = [part.split("### END SOLUTION") for part in parts[1:]]
        given = parts[0] + "".join(rest for _, rest in regions)  # the starter code around the regions
        written = {line.strip() for region, _ in regions for line in region.splitlines()} - {""}
        written = {line for line in written if line not in given}
        hidden = next(c.source for c in source.cells if "BEGIN HIDDEN TESTS" in c.source).splitlines()[2]
        answers = [line.strip() for line in answer_cell(source).source.splitlines() if len(line.strip()) > 12]
        # the hints the student opens on purpose may name a line of it (the last tier nearly is the answer)
        unhinted = "\n".join(c.source for c in nbformat.reads(release, 4).cells
                             if not c.metadata.get("nbgrader", {}).get("grade_id", "").endswith("_task"))
        for line in [line for line in written if len(line) > 12] + [hidden] + answers:
            assert line not in unhinted, f"{exercise}: the release contains `{line}`"
        assert answer_cell(nbformat.reads(release, 4)).source.strip() == "YOUR ANSWER HERE", exercise


def test_release_holds_no_hint_text(course):
    """The hints are opened by a call (labkit.hint), one tier at a time: no tier's text is in
    a released notebook, where an editor or `nbconvert --to script` would show it."""
    from labkit.notebook.hints import HINTS

    for exercise in EXERCISES:
        released = (course / "release" / exercise / f"{exercise}.ipynb").read_text()
        assert f'labkit.hint(\\"{exercise.split("_")[0]}\\", 1)' in released, exercise
        for hint in HINTS[exercise]:
            assert json.dumps(hint[:60])[1:-1] not in released, f"{exercise}: a hint's text is in the release"


def test_solutions_get_full_marks(course):
    """Every automatic point, and the written answers left for the instructor: graded by hand
    (the formgrader writes a manual score), the solution reaches 10 of 10."""
    from nbgrader.api import Gradebook

    automatic = 10 - 2  # the answers' 2 points are graded by hand
    assert scores(course, "solution") == {e: (float(automatic), 10.0) for e in GRADED}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for exercise in GRADED:
            submission = gradebook.find_submission(exercise, "solution")
            assert submission.needs_manual_grade, exercise
            grade = gradebook.find_grade(f"{exercise}_answers", exercise, exercise, "solution")
            assert grade.auto_score is None and grade.max_score == 2
            grade.manual_score = 2  # what the formgrader does when the instructor gives full marks
        gradebook.db.commit()
    assert scores(course, "solution") == {e: (10.0, 10.0) for e in GRADED}
    # the predictions are set beside the measured figures, and no torch name is out of date
    outputs = graded_outputs(course, "solution", GRADED[0])
    assert "not measured: the check did not run on 4 ranks" in outputs and "no prediction written" in outputs
    assert "torch says" not in outputs and "FutureWarning" not in outputs


def test_untouched_release_scores_zero(course):
    got = scores(course, "untouched")
    assert got == {e: (0.0, 10.0) for e in EXERCISES}, got
    # the check shows the student's own line of the unwritten method
    assert "NotImplementedError" in graded_errors(course, "untouched", "ex4_ring")
    assert "my_ring.py line" in graded_errors(course, "untouched", "ex4_ring")


@pytest.mark.parametrize("student", sorted(BUGS))
def test_planted_bug_fails_with_its_own_message(course, student):
    exercise, _, _, messages = BUGS[student]
    assert scores(course, student) == {exercise: (0.0, 10.0)}
    errors = graded_errors(course, student, exercise)
    for message in messages:
        assert message in errors, f"{student}: `{message}` not in the check's report:\n{errors[-3000:]}"
    for other, (_, _, _, (signature, *_)) in BUGS.items():
        if other != student and not any(signature in m for m in messages):
            assert signature not in errors, f"{student}: the report says `{signature}`, which is {other}'s"
    if student in VISIBLE_CATCHES:  # the check the student runs says it, not only the hidden tests
        assert messages[0] in graded_errors(course, student, exercise, "_check")


def test_nothing_left_running_after_grading(course):
    assert leftovers(course) == []
    # Checks stopped mid-run (deadlocks, timeouts) spare multiprocessing's resource tracker,
    # which then unlinks the named semaphores their ranks leaked.
    before = set((course / "semaphores-before.txt").read_text().splitlines())
    assert not named_semaphores() - before


def test_a_killed_checker_leaves_no_rank_behind(tmp_path):
    """SIGKILL the process running a check mid-run: its ranks notice and end."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", "import labkit; labkit.check('allreduce', worlds=(2,), steps=100000)"],
                            env=env, start_new_session=True)
    deadline = time.time() + 240
    while len(list(tmp_path.glob("labkit-check-*/check-*.jsonl"))) < 2:  # both ranks are stepping
        assert time.time() < deadline and proc.poll() is None, "the check's ranks never started"
        time.sleep(0.2)
    time.sleep(2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while leftovers(tmp_path) and time.time() < deadline:
        time.sleep(0.5)
    assert leftovers(tmp_path) == []


def test_an_exception_is_shown_with_the_students_line(tmp_path):
    import labkit

    mine = tmp_path / "mine.py"
    mine.write_text("from labkit.strategies.base import Strategy\n\n\nclass Mine(Strategy):\n"
                    "    def sync_gradients(self, model):\n        chunks = [1, 2]\n        return chunks[self.world]\n")
    report = labkit.check(f"{mine}:Mine", worlds=(2,), verbose=False)
    assert not report.ok
    assert "in step 1, sync_gradients: IndexError: list index out of range" in str(report)
    assert "mine.py line 7 in sync_gradients: return chunks[self.world]" in str(report)


def test_make_sources_check_passes_on_the_committed_tree_and_fails_on_a_change(tmp_path):
    run = [sys.executable, str(COURSE / "make_sources.py"), "--check"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.copytree(COURSE / "source", tmp_path / "source")
    changed = tmp_path / "source" / "ex4_ring" / "ex4_ring.ipynb"
    nb = nbformat.read(changed, 4)
    solution_cell(nb).source = solution_cell(nb).source.replace("% world]", "% world] ")
    nbformat.write(nb, changed)
    proc = subprocess.run(run + ["--source", str(tmp_path / "source")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "ex4_ring.ipynb: differs from what make_sources.py generates" in proc.stdout


SOLUTIONS = {exercise: next(COURSE.glob(f"solutions/{name}")) for exercise, name in
             [("ex1_allreduce", "my_allreduce.py"), ("ex2_bucketed", "my_bucketed.py"), ("ex3_overlap", "my_overlap.py"),
              ("ex4_ring", "my_ring.py"), ("ex5_ps", "my_ps.py"), ("ex6_ps_sharded", "my_sharded.py"),
              ("ex7_fsdp", "my_fsdp.py")]}


def test_solutions_are_files_the_lab_loads():
    """Each exercise's %%writefile cell is its solution file, which the lab imports like any method."""
    from labkit.strategies import load_strategy
    from labkit.strategies.base import Strategy

    for exercise, path in SOLUTIONS.items():
        cell = solution_cell(nbformat.read(COURSE / "source" / exercise / f"{exercise}.ipynb", 4)).source
        head, code = cell.split("\n", 1)
        assert head == f"%%writefile {path.name}" and code == path.read_text(), exercise
        spec = next(line.split('"')[1] for line in nbformat.read(COURSE / "source" / exercise / f"{exercise}.ipynb", 4)
                    .cells[9].source.splitlines() if "labkit.check(" in line)
        assert issubclass(load_strategy(f"{path.parent / spec}"), Strategy)


# Each exercise's solution and the package's method it teaches (issue 28: one source per taught method, or
# a test that holds the two to the same declaration and the same counted operations). They stay two files:
# a solution is what a student writes in an hour (no compression option, no cost-model passes, no
# mixed-precision policy object), the package's file what the lab runs.
METHODS = {"ex1_allreduce": "allreduce", "ex2_bucketed": "bucketed", "ex3_overlap": "overlap", "ex4_ring": "ring",
           "ex5_ps": "ps", "ex6_ps_sharded": "ps_sharded", "ex7_fsdp": "fsdp"}
# (exercise, the package's method): in `make test` one pair, the one whose padding no world size escapes;
# exercise 7 against torch's FSDP2 in tests/test_optimizers.py (the check's MLP is too small for FSDP2's units)
PAIRS = [pytest.param(e, m, marks=[] if e == "ex6_ps_sharded" else [pytest.mark.slow], id=e)
         for e, m in METHODS.items() if e != "ex7_fsdp"]


def solution_spec(exercise: str) -> str:
    """path/to/my_x.py:MyClass, the class the exercise's check cell names."""
    return f"{SOLUTIONS[exercise]}:" + next(line.split(":")[1].split('"')[0] for line in nbformat.read(
        COURSE / "source" / exercise / f"{exercise}.ipynb", 4).cells[9].source.splitlines() if "labkit.check(" in line)


# Configs a method may refuse: where the package's method refuses one, its solution must too (a solution may
# refuse more: exercise 7 writes no no_sync, so it refuses accumulate).
REFUSABLE = [dict(amp="fp16"), dict(amp="bf16"), dict(nproc=1), dict(param_dtype="fp16"), dict(param_dtype="bf16"),
             dict(reduce_dtype="fp16"), dict(accumulate=2), dict(optimizer="adamw")]
GIVEN_HOOKS = ("state_dict", "load_state_dict", "held_tensors")  # given code, not the student's part


@pytest.mark.parametrize("exercise", list(METHODS))
def test_a_solution_declares_what_the_package_method_declares(exercise):
    """What the lab reads of a method before it starts (its About, resolved for a run) is the same
    for the solution as for the package's method: where it communicates, which ranks train, how
    often it synchronizes, its options' defaults; the configs the package refuses; and the state
    a checkpoint keeps and the tensors the memory count sees, where the package's method has any."""
    from labkit.config import RunConfig
    from labkit.strategies import load_strategy
    from labkit.strategies.base import Strategy

    method = METHODS[exercise]
    mine, theirs = load_strategy(solution_spec(exercise)), load_strategy(method)
    for option in mine.about.options:
        known = {o.name: o for o in theirs.about.options}
        assert option.name in known, f"{exercise}: option {option.name} is not one of {method}'s: {sorted(known)}"
        assert option.default == known[option.name].default and type(option.default) is type(known[option.name].default)
    for change in [{}, *REFUSABLE]:
        cfg = RunConfig(**{"strategy": method, "nproc": 4, **change})
        a, b = mine.about.of(cfg), theirs.about.of(cfg)
        for key in ("overlaps_backward", "servers", "sync_every", "plain_process", "mixed_precision"):
            assert getattr(a, key) == getattr(b, key), (exercise, change, key, getattr(a, key), getattr(b, key))
        if b.refusal:
            assert a.refusal, f"{exercise}: {method} refuses {change} ({b.refusal}), the solution runs it"
        elif change:
            assert not a.refusal or change == dict(accumulate=2) and exercise == "ex7_fsdp", (exercise, change, a.refusal)
    for hook in GIVEN_HOOKS:
        if getattr(theirs, hook) is not getattr(Strategy, hook):
            assert getattr(mine, hook) is not getattr(Strategy, hook), f"{exercise}: {method} has {hook}, the solution not"


@pytest.mark.parametrize("exercise,method", PAIRS)
def test_a_solution_counts_what_the_package_method_counts(exercise, method):
    import labkit

    spec = solution_spec(exercise)
    mine, theirs = (labkit.check(s, method=method, worlds=(3,), verbose=False) for s in (spec, method))
    assert mine.ok and theirs.ok, (mine, theirs)
    assert mine.outcomes[0].counts == theirs.outcomes[0].counts
    # the same operations, step by step and rank by rank: a reduce-scatter swapped for an all-reduce of
    # the same bytes, or one message cut in two, would leave the bytes alone
    ops = mine.outcomes[0].ops
    assert len(ops) == 3 and all(len(steps) == 3 and all(steps) for steps in ops.values()), ops
    assert ops == theirs.outcomes[0].ops, (ops, theirs.outcomes[0].ops)


def test_fsdp_that_keeps_its_full_layers_is_told_to_free_them(tmp_path):
    """Exercise 7's memory lesson is checked too: a solution that never frees a layer's full
    parameters and gradients matches DDP, and still fails, with the bytes it holds."""
    import labkit

    kept = tmp_path / "kept.py"
    kept.write_text(SOLUTIONS["ex7_fsdp"].read_text().replace(
        "        for p in params:\n            p.grad = None\n        free(self.full[index])\n", ""))
    report = labkit.check(f"{kept}:MyFSDP", method="fsdp", worlds=(2,), verbose=False)
    assert not report.ok
    assert ("parameters match DDP, but between steps rank 0's model still holds 8,280 B of parameters and "
            "gradients (the whole model is 4,136 B, a 1/2 shard 2,072 B)") in str(report), report


REDRAWS = '''import torch
import torch.distributed as dist
from labkit.strategies.base import Strategy, grads_of


class Redraws(Strategy):
    def prepare(self, model, optimizer):
        torch.nn.init.normal_(next(model.parameters()))  # "re-initialize": each rank draws its own
        return model

    def sync_gradients(self, model):
        for grad in grads_of(model):
            dist.all_reduce(grad)
            grad /= self.world
'''


def test_a_method_that_loses_the_initial_broadcast_is_told_why(tmp_path):
    """The check seeds every rank differently: averaging gradients is not enough when the
    ranks start from different weights, and the report says that, not just "differs"."""
    import labkit

    mine = tmp_path / "redraws.py"
    mine.write_text(REDRAWS)
    report = labkit.check(f"{mine}:Redraws", method="allreduce", worlds=(2,), verbose=False)
    assert not report.ok
    assert "did not start from rank 0's state: after prepare" in str(report)  # rank 0 redrew too
    assert "relies on every rank drawing the same random numbers" in str(report)
    # without the redraw the loop's broadcast before prepare makes it pass, and counts it as setup
    mine.write_text(REDRAWS.replace("        torch.nn.init.normal_", "        pass  # "))
    report = labkit.check(f"{mine}:Redraws", method="allreduce", worlds=(2,), verbose=False)
    assert report.ok, report
    setup = report.outcomes[0].setup[0]
    assert setup["ops"] == {"broadcast": [1, setup["ops"]["broadcast"][1]]} and setup["collectives"] == 1
    assert report.outcomes[0].counts[0]["collectives"] == 6  # the steps' counts hold no broadcast


def test_check_strategy_cli_passes_the_package_ring(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "labkit.cli", "check-strategy", "ring", "--method", "ring",
                           "--nproc", "3", "--model", "odd"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "✓ 3 ranks: parameters match DDP after 3 steps" in proc.stdout and "as the analytic ring" in proc.stdout
