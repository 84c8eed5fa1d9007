"""labkit: a teaching lab for data-parallel training.

    import labkit
    job = labkit.launch(strategy="ddp", profile="cpu")   # a real torchrun job, in the background
    result = labkit.run(strategy="ps", max_steps=20)      # launch, wait, parse result.json
"""

from labkit.config import ConfigError, RunConfig
from labkit.jobs.launch import Job, RunFailed
from labkit.profiles import PROFILES, make_config, resume_config
from labkit.strategies import STRATEGIES


def launch(config: RunConfig | None = None, profile: str = "auto", **overrides) -> Job:
    """Start a run in the background and return its Job at once."""
    cfg = config if config is not None else make_config(profile, **overrides)
    return Job(cfg).start()


def resume(run_dir) -> Job:
    """Continue a failed or interrupted run from its last checkpoint, in the background."""
    return Job(resume_config(run_dir)).start()


def run(config: RunConfig | None = None, profile: str = "auto", progress: bool = True, **overrides) -> dict:
    """Launch, wait (showing progress), and return the parsed result.json."""
    job = launch(config, profile, **overrides)
    job.wait(progress=progress)
    return job.result()


__all__ = ["ConfigError", "Job", "PROFILES", "RunConfig", "RunFailed", "STRATEGIES", "launch", "make_config", "resume", "run"]
