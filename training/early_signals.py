"""Signals that arrive before train.py's main() sets up its own handling (training.stop.StopRequest): while torch
and the project import, which takes seconds on a loaded machine. Python's defaults would kill the rank there
(SIGTERM) or print a traceback from inside an import (SIGINT); kept here instead, main() turns them into the same
clean stop as a signal during set-up (one line, exit 128 + N). Imports nothing heavy: train.py calls keep() before
it imports torch."""
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received = []


def keep():
    """From now until StopRequest takes over, SIGTERM and SIGINT are recorded, not acted on."""
    for signum in SIGNALS:
        signal.signal(signum, _record)


def _record(signum, frame):
    _received.append(signum)


def take():
    """The signals recorded since keep() (oldest first), forgotten once taken."""
    taken = list(_received)
    _received.clear()
    return taken
