"""Lessons as measured claims: each notebook ends with the one thing it set out to show, the
figure that shows it, its interval, and whether this machine showed it (and why not).

    from labkit.report import lessons
    lessons.record("02_ddp", "overlap hides communication behind backward", figure=-48.0, unit="ms",
                   low=-96.0, high=0.0, shown=True, why="saved 48 ms, beyond the noise floor of ± 20 ms")
    print(lessons.claim_text(entry))          # the notebook's closing sentence

All of them live in one file, results/lessons.json: a list of entries keyed by (notebook, lesson),
each with notebook, lesson, figure, unit, low, high, shown, why, recorded_at. A notebook run again
replaces its own entry (never appends a second), so the file is what the last run of each notebook
showed; `labkit lab` ends with `table(load())`. Written atomically: a notebook stopped half-way, or
two notebooks writing at once, never leave half a file (the last writer of one entry wins).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from labkit.config import results_root

FIELDS = ("notebook", "lesson", "figure", "unit", "low", "high", "shown", "why", "recorded_at")


def lessons_path() -> Path:
    return results_root() / "lessons.json"


def _number(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"lesson {name} must be a number or None, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"lesson {name} must be finite, got {value!r}")
    return float(value)


def _text(name: str, value, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        raise ValueError(f"lesson {name} must be a{'' if empty_ok else ' non-empty'} string, got {value!r}")
    return value.strip()


def validate(notebook, lesson, figure, unit, low, high, shown, why) -> dict:
    """The entry's fields checked and normalised; a one-line ValueError names the bad field."""
    entry = {"notebook": _text("notebook", notebook), "lesson": _text("lesson", lesson),
             "figure": _number("figure", figure), "unit": _text("unit", unit, empty_ok=True),
             "low": _number("low", low), "high": _number("high", high)}
    if not isinstance(shown, bool):
        raise ValueError(f"lesson shown must be True or False, got {shown!r}")
    entry["shown"] = shown
    # "why" is required both ways: a shown lesson says what showed it, a lesson not shown says why not
    entry["why"] = _text("why", why)
    if (entry["low"] is None) != (entry["high"] is None):
        raise ValueError(f"lesson interval needs both low and high or neither, got low={low!r} high={high!r}")
    if entry["low"] is not None:
        if entry["low"] > entry["high"]:
            raise ValueError(f"lesson interval low {low!r} is above high {high!r}")
        if entry["figure"] is not None and not entry["low"] <= entry["figure"] <= entry["high"]:
            raise ValueError(f"lesson figure {figure!r} lies outside its interval {low!r}–{high!r}")
    if shown and entry["figure"] is None:
        raise ValueError("lesson shown=True needs a measured figure (None means it was not measured)")
    return entry


def load(path=None) -> list[dict]:
    """Every recorded lesson, in the order first recorded; [] when none was."""
    path = Path(path) if path is not None else lessons_path()
    if not path.exists():
        return []
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path} is not a list of lessons")
    return entries


def record(notebook: str, lesson: str, figure: float | None, unit: str, low: float | None,
           high: float | None, shown: bool, why: str, path=None) -> dict:
    """Validate one lesson and write it into lessons.json, replacing the entry of the same
    (notebook, lesson); returns the entry as written."""
    entry = validate(notebook, lesson, figure, unit, low, high, shown, why)
    entry["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = Path(path) if path is not None else lessons_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = load(path)
    key = (entry["notebook"], entry["lesson"])
    for i, old in enumerate(entries):
        if (old.get("notebook"), old.get("lesson")) == key:
            entries[i] = entry  # in place: the table keeps the notebooks' order
            break
    else:
        entries.append(entry)
    from labkit.files import write_json  # here, not at the top: labkit.files imports torch
    write_json(path, entries)
    return entry


def _figure_text(entry: dict) -> str:
    figure, low, high, unit = entry.get("figure"), entry.get("low"), entry.get("high"), entry.get("unit") or ""
    if figure is None:
        return "not measured"
    text = f"{figure:.3g}"
    if low is not None and high is not None:
        dash = " – " if low < 0 or high < 0 else "–"  # "-96 – 0", not "-96–0"
        text += f" [{low:.3g}{dash}{high:.3g}]"
    return f"{text} {unit}".rstrip()


def claim_text(entry: dict) -> str:
    """The notebook's closing sentence: the lesson, its figure and interval, shown or not and why."""
    verdict = "shown on this machine" if entry["shown"] else "not shown on this machine"
    return f"Lesson — {entry['lesson']}: {_figure_text(entry)}; {verdict}, because {entry['why']}."


def summary_line(entries: list[dict]) -> str:
    """E.g. "6 of 8 lessons from 5 notebooks shown on this machine"."""
    shown = sum(bool(e.get("shown")) for e in entries)
    notebooks = len({e.get("notebook") for e in entries})
    return (f"{shown} of {len(entries)} lesson{'s' if len(entries) != 1 else ''} from {notebooks} "
            f"notebook{'s' if notebooks != 1 else ''} shown on this machine")


def table(entries: list[dict]) -> str:
    """A plain-text table, one lesson a row: notebook, lesson, figure [low–high] unit, shown, why;
    the summary line under it."""
    if not entries:
        return "no lesson recorded"
    header = ("notebook", "lesson", "figure [interval]", "shown", "why")
    rows = [(str(e.get("notebook")), str(e.get("lesson")), _figure_text(e),
             "shown" if e.get("shown") else "not shown", str(e.get("why"))) for e in entries]
    # the last column (why) is left unpadded: it is the longest and ends the line
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(row) -> str:
        return "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]])

    rule = "  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1])
    return "\n".join([line(header), rule, *map(line, rows), "", summary_line(entries)])
