"""Errors the CLI turns into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a file, a flag. Printed as one line, exit 2."""


class ConfigError(UserError, ValueError):
    """A config key is unknown, has the wrong type, or is out of range. The message names the key."""


class RunFailed(Exception):
    """A run started but failed (a worker error, too many non-finite steps). One line, exit 1."""


def root_cause(exc: BaseException) -> str:
    """The last non-blank line of the innermost cause: what Ray's wrapped worker errors come down to."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    lines = [line for line in str(seen).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(seen).__name__


class Interrupted(Exception):
    """The run was stopped by a signal (Ctrl-C, SIGTERM). One line; exit code 128 + the signal's number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class DataError(UserError):
    """Bad data: a malformed record, a missing field, a chat the tokenizer cannot render.

    One line naming where (`file:line`) and the field, so a user can find and fix the record.
    """
