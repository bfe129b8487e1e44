"""Errors the user can fix: the CLI prints them as one line, never a traceback."""


class ConfigError(ValueError):
    """A suite, parameter or command-line value is wrong; the message names the field.

    Messages often quote what a library said (YAML's reader, torchvision), which may span
    lines: the message is folded onto one line so the CLI's error stays one line.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Diverged(RuntimeError):
    """A loss or hypergradient became non-finite: the cell is recorded as `diverged`."""


class ContractBreach(RuntimeError):
    """An estimator broke the estimator contract during a run (gradients for keys that are not
    the hyperparameters): that cell is an `error` row saying so."""
