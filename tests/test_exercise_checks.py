"""Planted bugs that the visible check must catch, each with a message naming its cause
(issue 27), under real torchrun on 2 ranks (the short buffer's case on 4): a ring that
breaks on an empty chunk, a receive into a chunk one off, a ring whose all-gather copies
are off where every chunk has the same length, an FSDP that never frees a layer after its
forward. And the hints: out of the notebooks, opened one tier at a time by a call, recorded.
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

COURSE = REPO / "assignments"
RING = (COURSE / "solutions" / "my_ring.py").read_text()
FSDP = (COURSE / "solutions" / "my_fsdp.py").read_text()


def planted(tmp_path: Path, name: str, source: str, old: str, new: str) -> str:
    assert old in source, f"the planted bug {name} no longer matches the solution"
    path = tmp_path / f"{name}.py"
    path.write_text(source.replace(old, new))
    return str(path)


def test_a_ring_that_skips_only_when_both_sides_are_empty_fails_the_visible_check(tmp_path):
    """The student's first attempt of issue 27: passes the 517-value buffer at every world
    size; the visible check's 2-value buffer on 4 ranks (two empty chunks side by side) fails it."""
    import labkit

    spec = planted(tmp_path, "empty", RING, '''        ops = []
        if send.numel():
            ops.append(dist.P2POp(dist.isend, send, right))
        if recv.numel():
            ops.append(dist.P2POp(dist.irecv, recv, left))
        for request in dist.batch_isend_irecv(ops) if ops else []:''', '''        if send.numel() == 0 and recv.numel() == 0:
            return
        ops = [dist.P2POp(dist.isend, send, right), dist.P2POp(dist.irecv, recv, left)]
        for request in dist.batch_isend_irecv(ops):''')
    report = labkit.check(f"{spec}:MyRing", method="ring", worlds=(2,), verbose=False)
    assert not report.ok and report.outcomes[0].ok, report  # the 517 values pass; the short buffer does not
    text = str(report).splitlines()[-1]
    assert "4 ranks, a buffer of 2 values (shorter than the world size: empty chunks)" in text, report
    assert "the two sides of this exchange disagree on the chunk" in text, report
    assert "was an empty chunk" in text and "skip each empty send and each empty receive on its own" in text, report


def test_a_receive_into_a_chunk_one_off_names_both_sides_of_the_exchange(tmp_path):
    """Unequal chunks (517 on 2 ranks: 259 + 258): gloo's own error is on one rank, a reset on
    the other; the check says which two sides disagreed, with the sizes each posted."""
    import labkit

    spec = planted(tmp_path, "off", RING, "chunks[(rank - step + 1) % world], chunks[(rank - step) % world]",
                   "chunks[(rank - step + 1) % world], chunks[(rank - step - 1) % world]")
    report = labkit.check(f"{spec}:MyRing", method="ring", worlds=(2,), verbose=False)
    assert not report.ok
    assert ("2 ranks: rank 1 received 259 values where rank 0 sent 258 (step 1, sync_gradients, message 2 from "
            "rank 0 to rank 1): the two sides of this exchange disagree on the chunk") in str(report), report
    assert "GLHF" not in str(report) and "Connection reset by peer …" not in str(report)


def test_an_all_gather_one_off_with_equal_chunks_is_said_to_be_the_all_gather(tmp_path):
    """Equal chunks (58 values on 2 ranks): the sizes agree, the values do not; the check
    tells the phase from which chunks each rank held right after sync_gradients."""
    import labkit

    spec = planted(tmp_path, "copies", RING, "chunks[(rank - step + 1) % world], chunks[(rank - step) % world]",
                   "chunks[(rank - step + 1) % world], chunks[(rank - step - 1) % world]")
    report = labkit.check(f"{spec}:MyRing", method="ring", worlds=(2,), model="odd", verbose=False)
    assert not report.ok
    assert "parameters differ from DDP after step 1" in str(report), report
    assert "the sums were right but a copy landed in the wrong chunk, so the reduce-scatter worked and the " \
           "all-gather is off" in str(report), report


def test_an_fsdp_that_never_frees_a_layer_after_its_forward_is_told_which_free(tmp_path):
    """The free at the end of backward hid the missing one from the between-steps weighing:
    the check now weighs each layer's forward start."""
    import labkit

    spec = planted(tmp_path, "nofree", FSDP, "        free(self.full[index])\n        if torch.is_grad_enabled()",
                   "        if torch.is_grad_enabled()")
    report = labkit.check(f"{spec}:MyFSDP", method="fsdp", worlds=(2,), verbose=False)
    assert not report.ok
    first = str(report).splitlines()[1]
    assert first.startswith("✗ 2 ranks: parameters match DDP, but during the forward of step 1 rank "), report
    assert "held layers 0, 2 whole when layer 4's forward began" in first, report
    assert "free each layer's full parameters in after_forward" in first, report


# -- hints ------------------------------------------------------------------------------

def test_no_hint_text_in_the_exercise_notebooks():
    """The source notebooks (and so the release nbgrader makes from them) carry the call, not
    the text; tests/test_assignments.py greps the release itself."""
    from labkit.notebook.hints import HINTS

    for exercise, texts in HINTS.items():
        text = (COURSE / "source" / exercise / f"{exercise}.ipynb").read_text()
        assert f'labkit.hint(\\"{exercise.split("_")[0]}\\", 1)' in text, exercise
        for hint in texts:
            assert json.dumps(hint[:60])[1:-1] not in text, f"{exercise}: hint text in the notebook: {hint[:60]}"


def test_a_hint_prints_its_tier_one_at_a_time_and_is_recorded(tmp_path, capsys):
    import labkit
    from labkit.notebook.hints import HINTS, opened

    labkit.hint("ex4", 2, folder=tmp_path)
    assert "opens after hint 1" in capsys.readouterr().out and opened(tmp_path) == {}
    labkit.hint("ex4", 1, folder=tmp_path)
    assert capsys.readouterr().out.strip() == f"Hint 1 of 3 (ex4_ring): {HINTS['ex4_ring'][0]}"
    labkit.hint("ex4_ring", 2, folder=tmp_path)
    labkit.hint("ex4", 2, folder=tmp_path)  # twice: recorded once
    assert capsys.readouterr().out.startswith("Hint 2 of 3 (ex4_ring): ")
    assert opened(tmp_path) == {"ex4_ring": [1, 2]}
    records = json.loads((tmp_path / "hints_opened.json").read_text())
    assert [(r["exercise"], r["tier"]) for r in records] == [("ex4_ring", 1), ("ex4_ring", 2)]
    with pytest.raises(ValueError, match="ex4_ring has hints 1 to 3"):
        labkit.hint("ex4", 4, folder=tmp_path)


def test_the_grades_export_has_a_hints_column(tmp_path, monkeypatch):
    """nbgrader's export, through the course's plugin, on a gradebook of one submission."""
    from nbgrader.api import Gradebook

    from labkit.assignments.export import HintsCsvExportPlugin

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # nbgrader's alembic
    folder = tmp_path / "submitted" / "alice" / "ex4_ring"
    folder.mkdir(parents=True)
    (folder / "hints_opened.json").write_text(json.dumps([{"exercise": "ex4_ring", "tier": 1}]))
    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gradebook:
        gradebook.add_assignment("ex4_ring")
        gradebook.add_student("alice")
        gradebook.add_student("bob")
        HintsCsvExportPlugin().export(gradebook)
    rows = (tmp_path / "grades.csv").read_text().splitlines()
    assert rows[0].endswith(",hints_opened")
    assert any(r.startswith("ex4_ring,") and ",alice," in r and r.endswith(",ex4_ring: 1") for r in rows), rows
    assert any(",bob," in r and r.endswith(",") for r in rows), rows


def test_make_sources_writes_no_hint_text(tmp_path):
    sys.path.insert(0, str(COURSE))
    import make_sources
    from labkit.notebook.hints import HINTS

    for ex in make_sources.EXERCISES:
        cells = "\n".join(c.source for c in make_sources.notebook(ex).cells)
        assert all(hint[:60] not in cells for hint in HINTS[ex["name"]]), ex["name"]
    assert nbformat  # the notebooks are nbformat's


DIES = '''import torch.distributed as dist
from labkit.strategies.base import Strategy, grads_of


class Dies(Strategy):
    def sync_gradients(self, model):
        if self.rank == 1:
            raise ValueError("rank 1 gave up")
        for grad in grads_of(model):
            dist.all_reduce(grad)  # rank 0 waits here for a peer that is gone
'''


def test_the_rank_that_failed_first_is_reported_not_the_reset_it_caused(tmp_path):
    import labkit

    mine = tmp_path / "dies.py"
    mine.write_text(DIES)
    report = labkit.check(f"{mine}:Dies", worlds=(2,), verbose=False)
    assert not report.ok
    first = str(report).splitlines()[1]
    assert first.startswith("✗ 2 ranks: exception on rank 1 in step 1, sync_gradients: ValueError: rank 1 gave up"), report
    assert "dies.py line 8 in sync_gradients: raise ValueError" in str(report), report
