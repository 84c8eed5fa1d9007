"""labkit: a teaching lab for data-parallel training.

    import labkit
    job = labkit.launch(strategy="ddp", profile="cpu")   # a real torchrun job, in the background
    result = labkit.run(strategy="ps", max_steps=20)      # launch, wait, parse result.json

`import labkit` is light: torch is imported only when something needs it (a config is
made, a result is loaded), through the module-level __getattr__ below (PEP 562).
"""

from labkit.config import ConfigError, RunConfig

# name → module that defines it, imported on first use
_LAZY = {
    "Job": "labkit.jobs.job", "RunFailed": "labkit.jobs.job",
    "PROFILES": "labkit.profiles", "make_config": "labkit.profiles", "resume_config": "labkit.profiles",
    "STRATEGIES": "labkit.strategies", "load_strategy": "labkit.strategies",
    "check": "labkit.assignments.check", "hint": "labkit.notebook.hints",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")


def launch(config: RunConfig | None = None, profile: str = "auto", **overrides):
    """Start a run in the background and return its Job at once."""
    from labkit.jobs.job import Job
    from labkit.profiles import make_config

    cfg = config if config is not None else make_config(profile, **overrides)
    return Job(cfg).start()


def resume(run_dir):
    """Continue a failed or interrupted run from its last checkpoint, in the background."""
    from labkit.jobs.job import Job
    from labkit.profiles import resume_config

    return Job(resume_config(run_dir)).start()


def run(config: RunConfig | None = None, profile: str = "auto", progress: bool = True, **overrides) -> dict:
    """`launch`, wait (showing progress), and return the parsed result.json."""
    job = launch(config, profile, **overrides)
    job.wait(progress=progress)
    return job.result()


__all__ = ["ConfigError", "Job", "check", "PROFILES", "RunConfig", "RunFailed", "STRATEGIES", "launch", "load_strategy",
           "make_config", "resume", "run"]
