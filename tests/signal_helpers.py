"""Signals for the tests that interrupt a real ``lambdaskip`` process."""
import signal


def sigint_as_in_a_terminal() -> None:
    """Run in the child before exec (``Popen(preexec_fn=...)``): SIGINT at its default, as under a terminal's
    Ctrl-C. A test session started in the background of a non-interactive shell inherits SIGINT ignored,
    and Python keeps an ignored SIGINT ignored: the test's signal would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
