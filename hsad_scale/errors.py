"""Error types with a meaning for the command line."""


class InputError(ValueError):
    """Bad input from the user: the CLI prints one line and exits with status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: raised in the main thread, so that every ``with`` block
    unwinds (the cluster stops, temporary outputs are removed) before the command exits
    with 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


#: The signal number of an interruption not yet acted upon (set by the command line's handler).
#: A signal handler's exception is swallowed when it lands in a garbage-collector callback or a
#: ``__del__`` ("Exception ignored in ..."), so the flag is checked again at stage boundaries and
#: before an output is renamed into place: an interrupted run never publishes its output.
pending_interruption: list = [None]


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` when a SIGINT/SIGTERM arrived and its exception was lost."""
    if pending_interruption[0] is not None:
        raise Interrupted(pending_interruption[0])
