"""Error types with a meaning for the command line."""


class InputError(ValueError):
    """Bad input from the user: the CLI prints one line and exits with status 2."""
