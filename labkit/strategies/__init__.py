"""The synchronization methods, one file each, wired by hand in one dict.

Adding a method is one file plus one line here: a student can follow the wiring. The tests
then ask for one line more, in tests/test_optimizers.py (the method run with AdamW, and held
to DDP if it is exact); its colour in every figure follows from its place in REGISTRY.
The contract every method follows, and how it describes itself, is in base.py.
A method in a file of your own runs the same way: `--strategy path/to/my_ring.py:MyRing`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from labkit.config import is_file_spec
from labkit.errors import ConfigError

BASELINE = "ddp"  # what every method is compared with, and the default

# name → "module:Class", imported only when asked for (each file imports torch)
REGISTRY = {
    "single": "single:Single",
    "ddp": "ddp:TorchDDP",
    "allreduce": "allreduce:AllReduce",
    "ps": "ps:ParameterServer",
    # advanced variants
    "bucketed": "bucketed:Bucketed",
    "overlap": "overlap:Overlap",
    "ring": "ring:Ring",
    "ps_sharded": "ps_sharded:ShardedServer",
    "powersgd": "powersgd:PowerSGD",
    "hierarchical": "hierarchical:Hierarchical",
    # communicate less, hold less
    "localsgd": "localsgd:LocalSGD",
    "diloco": "diloco:DiLoCo",
    "ssp": "ssp:StaleSynchronousServer",
    "fsdp": "fsdp:FullyShardedDP",
}

# The methods of one plain process (no torchrun: `About(plain_process=True)` in their file), known
# here without importing them: a run of any other method starts its torchrun while its config is
# checked (labkit.jobs.job.prestart). tests/test_strategies_registry.py holds the two in step.
PLAIN_PROCESS = {"single"}


def load_strategy(spec: str):
    """The Strategy class for a registry name or 'path/to/file.py:ClassName'.
    Bad input raises ConfigError with one line saying what is wrong and how to fix it."""
    if not is_file_spec(spec):
        if spec not in REGISTRY:  # said before anything imports torch
            raise ConfigError(f"unknown strategy '{spec}'; choose one of {', '.join(REGISTRY)}, "
                              f"or give a file: --strategy path/to/file.py:ClassName")
        module, name = REGISTRY[spec].split(":")
        return checked(getattr(importlib.import_module(f"{__name__}.{module}"), name))
    file, name = spec.rsplit(":", 1)
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"strategy file {file} not found (from --strategy {spec})")
    from .base import Strategy

    module_name = f"labkit_user_strategy_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ConfigError(f"{path}:{error.lineno}: syntax error: {error.msg}") from None
    except SystemExit as error:  # sys.exit() at module level would end labkit itself, having run nothing
        raise ConfigError(f"{path}: importing it called sys.exit({error.code}); a strategy file must not exit when "
                          f"imported (put a script's code under `if __name__ == \"__main__\":`)") from None
    except Exception as error:  # an import that fails, a NameError at module level...
        raise ConfigError(f"{path}: importing it failed: {type(error).__name__}: {error}") from None
    cls = getattr(module, name, None)
    if cls is None:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, Strategy)
                       and v is not Strategy)
        raise ConfigError(f"{path} has no class {name}" + (f"; it defines {', '.join(found)}" if found else ""))
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"{path}: {name} is not a Strategy subclass; write `class {name}(Strategy):` "
                          f"(from labkit.strategies.base import Strategy)")
    return checked(cls)


def checked(cls):
    """`cls`, unless it says what it is outside its declaration: a class attribute named like a
    field of About (`options = (...)`, `label`, ...) would be read by nothing."""
    from .base import About, Strategy

    for klass in cls.__mro__[:cls.__mro__.index(Strategy)]:
        stray = sorted(set(vars(klass)) & set(About.__dataclass_fields__))
        if stray:
            raise ConfigError(f"{klass.__name__} sets {', '.join(stray)} on the class; a method says what it is in "
                              f"one declaration: about = About({stray[0]}=...) (labkit/strategies/base.py)")
    return cls


IMPORT_TIMEOUT_S = 60.0  # torch's own import is most of it: seconds, on 2 busy cores


def check_import(spec: str, timeout_s: float = IMPORT_TIMEOUT_S) -> None:
    """Import a method's file in a child process first, under a watchdog: a file that waits
    forever at module level (a loop, input(), a collective before any process group) is
    reported in one line instead of hanging the launcher with it."""
    import os
    import subprocess

    if not is_file_spec(spec):
        return
    code = "import sys; from labkit.strategies import load_strategy; load_strategy(sys.argv[1])"
    root = str(Path(__file__).resolve().parents[2])  # the folder holding labkit/, for a checkout not installed
    try:
        done = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL, cwd=Path(spec.rsplit(":", 1)[0]).parent,
                              env={**os.environ, "PYTHONPATH": root})
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{spec.rsplit(':', 1)[0]}: importing it did not finish in {timeout_s:.0f} s — something at "
                          f"module level waits forever (a loop, input(), a collective); move it into a method") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        said = lines[-1].removeprefix("labkit.errors.ConfigError: ") if lines else f"exit code {done.returncode}"
        raise ConfigError(said)


def describe(spec: str) -> list[str]:
    """One line per option of a method: name, default, help (for `labkit strategies`)."""
    cls = load_strategy(spec)
    doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
    lines = [f"{spec}: {doc[0] if doc else cls.__name__}"]
    for option in cls.about.options:
        choices = f" ({' / '.join(map(str, option.choices))})" if option.choices else ""
        lines.append(f"    --set {option.name}={option.default}{choices}  {option.help}")
    return lines


def __getattr__(name):  # PEP 562: STRATEGIES (name → class) imports every method, so only on request
    if name == "STRATEGIES":
        return {key: load_strategy(key) for key in REGISTRY}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BASELINE", "PLAIN_PROCESS", "REGISTRY", "STRATEGIES", "check_import", "describe", "load_strategy"]
