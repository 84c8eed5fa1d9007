"""A run's torchrun started while its config is checked (labkit.jobs.job.prestart): the
methods known to run without torchrun, and a refusal after the start that leaves nothing behind."""

import psutil
import pytest

from labkit.cli import main
from labkit.strategies import PLAIN_PROCESS, REGISTRY, load_strategy


def test_plain_process_methods_are_those_without_a_process_group():
    assert PLAIN_PROCESS == {name for name in REGISTRY if load_strategy(name).about.plain_process}


def test_a_refusal_after_the_prestart_leaves_no_folder_and_no_process(tmp_path, capsys):
    out = tmp_path / "run"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    # ddp's own option, checked only once its file is imported (after torchrun has started)
    code = main(["run", "--strategy", "ddp", "--profile", "cpu", "--max-steps", "1", "--out", str(out),
                 "--set", "ddp_hook=zstd"])
    assert code == 2
    assert "ddp_hook" in capsys.readouterr().err
    assert not out.exists()
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
