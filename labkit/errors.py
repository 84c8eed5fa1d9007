"""The lab's one error type for bad input, in a file that imports nothing but Python.

`config` and `strategies` both raise it, and neither needs the other to do so: a
strategy file writes `from labkit.errors import ConfigError` and `raise ConfigError(...)`.
"""


class ConfigError(ValueError):
    """Bad input from the user: the message names the problem and the fix, in one line."""
