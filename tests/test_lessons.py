"""The lessons file (issue 32): each notebook's measured claim in results/lessons.json, and the
table `labkit lab` ends with. No torch, no torchrun."""

import json

import pytest

from labkit.report import lessons


def test_record_writes_the_schema_and_returns_the_entry(tmp_path):
    path = tmp_path / "lessons.json"
    entry = lessons.record("02_ddp", "overlap hides communication", -48.0, "ms", -90.0, -10.0, True,
                           "48 ms saved, beyond the noise floor of 20 ms", path=path)
    written = json.loads(path.read_text())
    assert written == [entry] and list(entry) == list(lessons.FIELDS)
    assert entry["figure"] == -48.0 and entry["shown"] is True and entry["recorded_at"]


def test_the_default_file_is_results_lessons_json(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path / "results"))
    lessons.record("06_compare", "ddp beats all-reduce after backward", None, "×", None, None, False,
                   "no repeat of allreduce finished")
    assert lessons.load()[0]["notebook"] == "06_compare"
    assert (tmp_path / "results" / "lessons.json").exists()


def test_a_notebook_run_again_replaces_its_own_entry(tmp_path):
    path = tmp_path / "lessons.json"
    lessons.record("02_ddp", "overlap", 1.0, "ms", 0.0, 2.0, True, "first", path=path)
    lessons.record("04_ps", "one server saturates", 3.0, "×", 2.0, 4.0, True, "n grows", path=path)
    lessons.record("02_ddp", "overlap", 5.0, "ms", 4.0, 6.0, False, "second", path=path)
    entries = lessons.load(path)
    assert [(e["notebook"], e["figure"], e["why"]) for e in entries] == [("02_ddp", 5.0, "second"),
                                                                         ("04_ps", 3.0, "n grows")]
    assert not list(tmp_path.glob(".lessons.json.*"))  # the atomic write left no temporary file


@pytest.mark.parametrize("change, field", [
    ({"notebook": ""}, "notebook"), ({"lesson": 3}, "lesson"), ({"figure": "fast"}, "figure"),
    ({"figure": float("nan")}, "figure"), ({"shown": "yes"}, "shown"), ({"why": " "}, "why"),
    ({"low": None}, "interval"), ({"low": 5.0, "high": 4.0}, "interval"), ({"figure": 9.0}, "outside"),
    ({"figure": None, "low": None, "high": None}, "shown=True needs"), ({"unit": None}, "unit")])
def test_a_bad_field_is_one_line_naming_it(tmp_path, change, field):
    good = dict(notebook="03", lesson="a call costs α", figure=4.2, unit="ms", low=3.9, high=4.6, shown=True,
                why="62 calls × 4.2 ms")
    with pytest.raises(ValueError) as error:
        lessons.record(**{**good, **change}, path=tmp_path / "lessons.json")
    assert field in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "lessons.json").exists()  # nothing written


def test_the_closing_table_and_summary():
    entries = [lessons.validate("02_ddp", "overlap hides communication", -48.0, "ms", -90.0, -10.0, True, "saved 48 ms"),
               lessons.validate("04_ps", "one server saturates", 2.9, "×", 2.5, 3.2, True, "bytes grow as n − 1"),
               lessons.validate("06_compare", "ddp beats allreduce", 1.02, "×", 0.97, 1.08, False,
                                "the spreads overlap: 4 ranks share 2 cores")]
    text = lessons.table(entries)
    header, rule, *rows = text.splitlines()
    assert header.split()[:4] == ["notebook", "lesson", "figure", "[interval]"]
    assert "-48 [-90 – -10] ms" in rows[0] and rows[0].split()[-4:] == ["shown", "saved", "48", "ms"]
    assert "1.02 [0.97–1.08] ×" in rows[2] and "not shown" in rows[2] and rows[2].endswith("share 2 cores")
    assert rows[-1] == "2 of 3 lessons from 3 notebooks shown on this machine"
    assert lessons.summary_line(entries[:1]) == "1 of 1 lesson from 1 notebook shown on this machine"
    assert lessons.table([]) == "no lesson recorded"
    assert lessons.claim_text(entries[2]) == ("Lesson — ddp beats allreduce: 1.02 [0.97–1.08] ×; not shown on this "
                                              "machine, because the spreads overlap: 4 ranks share 2 cores.")


def test_the_lab_ends_with_the_table_or_says_none_was_recorded(tmp_path, monkeypatch, capsys):
    from labkit.lab import closing

    monkeypatch.setenv("LABKIT_RESULTS", str(tmp_path / "results"))
    closing(draw=False)
    assert "no lesson was recorded" in capsys.readouterr().out
    assert not (tmp_path / "results" / "lessons.json").exists()  # and nothing written
    lessons.record("04_ps", "one server saturates", 2.9, "×", 2.5, 3.2, True, "bytes grow as n − 1")
    closing(draw=False)
    out = capsys.readouterr().out
    assert "one server saturates" in out and "1 of 1 lesson from 1 notebook shown on this machine" in out
