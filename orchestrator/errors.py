"""Errors the CLI turns into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a file, a flag. Printed as one line, exit 2."""


class ConfigError(UserError, ValueError):
    """A config key is unknown, has the wrong type, or is out of range. The message names the key."""


class RunFailed(Exception):
    """A run started but failed (a worker error, too many non-finite steps). One line, exit 1."""
