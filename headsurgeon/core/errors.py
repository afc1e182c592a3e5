"""The exceptions the CLI turns into one-line messages and exit codes.

Every error a user can cause derives from :class:`HeadsurgeonError`; its ``str`` is
already the one line to print (``recipe.yaml:12: train.lr: must be > 0``).
"""
from __future__ import annotations

# What the CLI exits with (README "Exit codes"; `headsurgeon inspect --help`).
EXIT_OK = 0        # done; a check's verdict is OK
EXIT_RUNTIME = 1   # the input was fine, the work failed (RuntimeFailure)
EXIT_USAGE = 2     # bad recipe, data, checkpoint or arguments (ValidationError)
EXIT_NOT_OK = 3    # a check ran to the end and its verdict is NOT OK (VerdictNotOk)


class HeadsurgeonError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.detail = file, line, field, message
        prefix = ""
        if file:
            prefix = f"{file}:{line}: " if line else f"{file}: "
        if field:
            prefix += f"{field}: "
        super().__init__(" ".join((prefix + message).split()))


class ValidationError(HeadsurgeonError):
    """Bad recipe, bad data file, bad arguments: the user's input is wrong (exit 2)."""

    exit_code = EXIT_USAGE


class CheckpointError(HeadsurgeonError):
    """A checkpoint or delta is missing, corrupt or does not belong to this base."""

    exit_code = EXIT_USAGE


class RuntimeFailure(HeadsurgeonError):
    """The input was fine but the work failed (disk full, remote job died, ...)."""

    exit_code = EXIT_RUNTIME


class VerdictNotOk(HeadsurgeonError):
    """A check ran fine and its verdict is NOT OK (``inspect``: a tensor edited outside the
    declared head slices, a missing or extra tensor, a file that differs from its manifest).
    Distinct from 1 and 2 so a script or CI can gate on the verdict itself."""

    exit_code = EXIT_NOT_OK
