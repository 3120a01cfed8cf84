"""User-facing errors.

Anything a user can get wrong (a path, a file, an option) raises `MetaclError` with one
line saying what is wrong, where, and how to fix it. The CLI prints that line and exits
with code 2; library users catch it like any exception. Programming errors stay ordinary
exceptions with tracebacks.
"""


class MetaclError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""

    exit_code = 2


class DataError(MetaclError):
    """Malformed data file: the message names file, line and field."""


class CheckpointError(MetaclError):
    """A checkpoint that is missing, corrupt, or belongs to a different run."""
