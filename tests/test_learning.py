"""Accuracy that means something (issue 32): the setting notebook 05b trains every method in makes
DDP learn — under real torchrun, ≥ 80 % validation top-1 on the tiny set (chance: 10 %) and a
validation loss that falls well below chance (ln 10 = 2.30). The setting is read from the
notebook's own parameters cell, so the test checks what the lab runs, not a copy of it."""

import ast
import json

from conftest import REPO, run_to

NOTEBOOK = REPO / "notebooks" / "05b_communicate_less.ipynb"
STEPS_PER_EPOCH = 10  # the tiny set's 640 training images at the cpu profile's global batch of 64


def notebook_parameters() -> dict:
    """The literal assignments of 05b's parameters cell (the cell papermill replaces)."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = ast.literal_eval(node.value)
                elif isinstance(target, ast.Tuple):
                    values.update(zip((t.id for t in target.elts), ast.literal_eval(node.value)))
    return values


def test_the_notebooks_setting_learns(tmp_path):
    p = notebook_parameters()
    result, _ = run_to(tmp_path / "ddp", "ddp", p["ranks"], f"model={p['model']}", f"epochs={p['epochs']}",
                       f"lr={p['lr']}", f"lr_warmup_steps={p['warmup']}",
                       max_steps=p["epochs"] * STEPS_PER_EPOCH)  # the whole run: every epoch validated
    epochs = result["epochs"]
    assert len(epochs) == p["epochs"]
    top1 = [e["val_top1"] for e in epochs]
    loss = [e["val_loss"] for e in epochs]
    assert top1[-1] >= 80, top1  # measured: 88.3 % after 12 epochs (2 ranks, lr 0.2)
    # falling: the last three epochs' validation loss well under the first three's and under chance
    assert sum(loss[-3:]) / 3 < 0.5 * sum(loss[:3]) / 3 and loss[-1] < 1.0, loss  # measured: 2.24 → 0.29
