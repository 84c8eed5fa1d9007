"""Run the notebooks headless with papermill, in order, into results/notebooks/.

Each executed copy keeps its outputs (figures inline), so results/notebooks/ is the
lab's record. A failing notebook stops the lab with its name and the failing cell.
"""

from __future__ import annotations

from pathlib import Path

from labkit.config import LAB_ROOT, ConfigError, results_root

NOTEBOOKS = LAB_ROOT / "notebooks"


class LabFailed(RuntimeError):
    pass


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if p.name[:2] in only]
        if not paths:
            raise ConfigError(f"--only {','.join(only)} matches no notebook; choose from "
                              + ", ".join(p.name[:2] for p in notebook_paths()))
    return paths


def run_notebooks(parameters: dict, only: list[str] | None = None, log_output: bool = True) -> list[Path]:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir = results_root() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebook_paths(only):
        target = out_dir / path.name
        print(f"== {path.name} → {target}", flush=True)
        try:
            papermill.execute_notebook(str(path), str(target), parameters=parameters, cwd=str(LAB_ROOT),
                                       kernel_name="python3", log_output=log_output, progress_bar=False)
        except PapermillExecutionError as error:
            raise LabFailed(f"notebook {path.name} failed in cell {error.exec_count}: "
                            f"{error.ename}: {error.evalue} (executed copy: {target})") from None
        written.append(target)
    return written
