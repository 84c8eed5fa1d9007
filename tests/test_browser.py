"""A method notebook in JupyterLab in headless Chromium (tests/browser/check_notebook.py):
the bar moves, figures render, no cell errors. Skipped, with the reason, where no
Chromium or Playwright is installed (`make browser-deps` installs both)."""

import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "browser"))
import check_notebook  # noqa: E402

SEEN_OK = {"bars": ["run: 0it [00:03, starting]", "run: 17% 1/6 [00:01<00:05, loss 2.3]",
                    "run: 100% 6/6 [00:04<00:00, loss 2.2]"],
           "notebook": {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": "x"}]}]},
           "images": 2, "text": "run: ok after 21s — step 6/6", "run_s": 30.0}


def test_verdict_passes_a_moving_bar_and_names_what_is_missing():
    assert "bar moved 1/6 → 6/6" in check_notebook.verdict(SEEN_OK)
    cases = {
        "did not move": {**SEEN_OK, "bars": SEEN_OK["bars"][-1:]},  # only ever seen finished
        "to its end": {**SEEN_OK, "bars": SEEN_OK["bars"][:2]},
        "no progress widget": {**SEEN_OK, "bars": []},
        "no figure": {**SEEN_OK, "images": 0},
        "raised ValueError: bad": {**SEEN_OK, "notebook": {"cells": [
            {"cell_type": "code", "outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "bad"}]}]}},
        "no summary line": {**SEEN_OK, "text": "nothing"},
    }
    for expected, seen in cases.items():
        with pytest.raises(check_notebook.CheckFailed, match=expected):
            check_notebook.verdict(seen)


def test_method_notebook_in_a_real_browser_shows_a_live_bar(tmp_path):
    why = check_notebook.missing()
    if why:
        pytest.skip(why)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "browser" / "check_notebook.py"), "--keep", tmp_path],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("browser check ok: 01_single_gpu.ipynb: bar moved")
