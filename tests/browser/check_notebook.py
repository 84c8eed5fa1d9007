"""What a student sees: a method notebook run in JupyterLab in a real (headless) Chromium.

    python tests/browser/check_notebook.py [--notebook notebooks/01_single_gpu.ipynb] [-p max_steps=6]

Starts JupyterLab on 127.0.0.1 with a random token in a scratch folder (its own
settings, results under it), opens a copy of the notebook with the parameters injected
the way papermill does, runs every cell from JupyterLab's own "run all" command, and
records every text the progress widget shows. It passes when the bar moved (two or
more step counts seen, the last one the total), a figure rendered (a loaded <img> in an
output) and no cell raised. Playwright drives the system's Chromium (Debian's
`chromium`; `make browser-deps`); no browser is downloaded.

Exit 0: the one-line verdict. 1: what failed (a screenshot is kept). 2: no Chromium or
Playwright, with how to get them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEFAULT_PARAMETERS = {"profile": "cpu", "epochs": 1, "max_steps": 4}
# Every cell attached to the page (Lab's default skips rendering cells out of view, and
# "run all" scrolls to the end while the job's cell is still running); no news pop-up.
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"}}


def find_chromium() -> str | None:
    """The Chromium to drive: $LABKIT_CHROMIUM, else `chromium` / `chromium-browser` on PATH."""
    for candidate in (os.environ.get("LABKIT_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def missing() -> str | None:
    """Why the check cannot run here, or None."""
    if find_chromium() is None:
        return "no Chromium found (make browser-deps installs Debian's chromium, or set LABKIT_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (make browser-deps: pip install -r requirements-browser.txt)"
    return None


class CheckFailed(Exception):
    pass


# -- the server -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_jupyterlab(root: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab on loopback with a token, its settings and workspaces in `root`, the app
    exposed to the page (window.jupyterapp) so the check can use Lab's own commands."""
    settings = root / "settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_PROGRESS", "JPY_SESSION_NAME")}
    env.update(LABKIT_RESULTS=str(root / "results"), JUPYTER_CONFIG_DIR=str(root / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root / 'lab'}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")
    log = open(root / "jupyterlab.log", "wb")  # noqa: SIM115 — the server writes it until stopped
    server = subprocess.Popen(command, cwd=root / "lab", env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if server.poll() is not None:
            raise CheckFailed(f"JupyterLab exited with {server.returncode}; see {root / 'jupyterlab.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    raise CheckFailed("JupyterLab did not answer within 90 s")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it shuts its kernels down), then SIGKILL what is left."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass


# -- the notebook ---------------------------------------------------------------------
def prepare_notebook(source: Path, parameters: dict, folder: Path) -> Path:
    """A copy of the notebook with papermill's injected-parameters cell, outputs stripped."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(source)), parameters)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    nbformat.write(nb, target)
    return target


STATE_JS = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel) return null;
  const cells = panel.content.model.cells;
  let pending = 0, errors = 0;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code' || !cell.sharedModel.getSource().trim()) continue;
    if (cell.executionCount === null) pending++;
    for (let j = 0; j < cell.outputs.length; j++) if (cell.outputs.get(j).type === 'error') errors++;
  }
  const bars = [...document.querySelectorAll('.jp-OutputArea-output .widget-hbox')].map(
    bar => [...bar.querySelectorAll('.widget-html-content')].map(e => e.textContent.trim()).join(' '));
  return {status: kernel.status, pending, errors, bars};
}"""

# Every text the progress widgets show, recorded on each change of the page (a poll could
# miss the steps of a fast machine): window.labkitBars.
RECORD_BARS_JS = """() => {
  window.labkitBars = [];
  const read = () => [...document.querySelectorAll('.jp-OutputArea-output .widget-hbox')].map(
    bar => [...bar.querySelectorAll('.widget-html-content')].map(e => e.textContent.trim()).join(' ')).join(' | ');
  new MutationObserver(() => {
    const text = read();
    if (text && window.labkitBars[window.labkitBars.length - 1] !== text) window.labkitBars.push(text);
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def run_in_browser(url: str, timeout_s: float, shot: Path) -> dict:
    """Open the notebook, run all cells, watch the bar; → what was seen."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            return _run_in_browser(pw, url, timeout_s, shot)
    except PlaywrightError as error:
        raise CheckFailed(f"browser: {str(error).splitlines()[0]}") from None


def _run_in_browser(pw, url, timeout_s, shot) -> dict:
    browser = pw.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_function(f"(() => {{ const s = ({STATE_JS})(); return s && s.status === 'idle'; }})",
                               timeout=180_000)
        page.evaluate(RECORD_BARS_JS)
        started = time.time()
        # Lab's own "Run All"; not awaited: its promise resolves only when every cell has run.
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        idle_polls, last = 0, None
        while time.time() - started < timeout_s:
            state = page.evaluate(STATE_JS) or {"status": "no kernel", "pending": -1, "errors": 0, "bars": []}
            steps = re.findall(r"\d+/[\d?]+", " ".join(state["bars"]))
            if (state["pending"], state["errors"], steps) != last:  # a log of the page, not of its clock
                print(f"  {time.time() - started:5.1f}s kernel {state['status']}, {state['pending']} cell(s) "
                      f"to run, {state['errors']} error(s), bar {state['bars'][-1:]}", file=sys.stderr)
                last = (state["pending"], state["errors"], steps)
            # The kernel reads idle between widget messages while a cell runs: wait for no cell left.
            finished = state["pending"] == 0 or state["errors"] > 0
            idle_polls = idle_polls + 1 if finished and state["status"] == "idle" else 0
            if idle_polls >= 3:
                break
            time.sleep(0.25)
        else:
            raise CheckFailed(f"cells still running after {timeout_s:.0f} s (kernel {state['status']}, "
                              f"{state['pending']} cell(s) not run, bar: {state['bars'][-1:]})")
        bars = page.evaluate("window.labkitBars")
        notebook = page.evaluate("window.jupyterapp.shell.currentWidget.content.model.toJSON()")
        images = page.eval_on_selector_all(".jp-OutputArea-output img",
                                           "els => els.filter(e => e.complete && e.naturalWidth > 0).length")
        text = page.inner_text(".jp-Notebook")
    finally:
        page.screenshot(path=str(shot), full_page=True)  # what the page showed, pass or fail
        browser.close()
    return {"bars": bars, "notebook": notebook, "images": images, "text": text, "run_s": time.time() - started}

def verdict(seen: dict) -> str:
    """Raise CheckFailed unless the bar moved, a figure rendered and no cell raised."""
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(seen["notebook"]["cells"])
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        index, name, value = errors[0]
        raise CheckFailed(f"cell {index} raised {name}: {value}")
    counts = [tuple(map(int, m.groups())) for text in seen["bars"] if (m := re.search(r"(\d+)/(\d+)", text))]
    distinct = list(dict.fromkeys(counts))
    if not distinct:
        raise CheckFailed(f"no progress widget with step counts seen (bar texts: {seen['bars'][:5]})")
    if len(distinct) < 2 or distinct[-1][0] != distinct[-1][1]:
        raise CheckFailed(f"the bar did not move to its end: step counts seen {distinct}")
    if seen["images"] < 1:
        raise CheckFailed("no figure rendered (no loaded <img> in any output)")
    if not re.search(r": ok after \d", seen["text"]):
        raise CheckFailed("no summary line ('…: ok after …') under the bar")
    return (f"bar moved {' → '.join(f'{n}/{t}' for n, t in distinct)} over {len(seen['bars'])} updates, "
            f"{seen['images']} figure(s) rendered, no cell errors, cells ran in {seen['run_s']:.0f} s")


def parse_parameters(pairs: list[str]) -> dict:
    parameters = dict(DEFAULT_PARAMETERS)
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            parameters[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parameters[key] = text
    return parameters


def on_sigterm(*_):
    """A timeout's SIGTERM: say so, and leave through `finally`, which stops the server."""
    print("browser check stopped by SIGTERM", file=sys.stderr)
    sys.exit(143)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, default=REPO / "notebooks" / "01_single_gpu.ipynb")
    parser.add_argument("-p", action="append", default=[], metavar="KEY=VALUE",
                        help=f"notebook parameter (defaults: {DEFAULT_PARAMETERS})")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the cells to run")
    parser.add_argument("--keep", type=Path, help="keep the scratch folder (server log, screenshot) here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    if (why := missing()):
        print(f"browser check skipped: {why}", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="labkit-browser-"))
    root.mkdir(parents=True, exist_ok=True)
    notebook = prepare_notebook(args.notebook.resolve(), parse_parameters(args.p), root / "lab")
    port, token = free_port(), secrets.token_hex(16)
    server = None
    try:
        server = start_jupyterlab(root, port, token)
        seen = run_in_browser(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}", args.timeout,
                              root / "screenshot.png")
        (root / "seen.json").write_text(json.dumps({k: v for k, v in seen.items() if k != "notebook"}, indent=1))
        print(f"browser check ok: {notebook.name}: {verdict(seen)}")
    except CheckFailed as failure:
        print(f"browser check failed: {notebook.name}: {failure} (server log, screenshot: {root})", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            stop(server)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
