"""Errors the user can fix: the CLI prints them as one line, never a traceback."""


class ConfigError(ValueError):
    """A suite, parameter or command-line value is wrong; the message names the field."""


class Diverged(RuntimeError):
    """A loss or hypergradient became non-finite: the cell is recorded as `diverged`."""
