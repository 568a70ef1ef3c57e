"""The error every part of training/ raises for something the user must change: one module that imports nothing,
so that the flags (config), the checkpoint files, the process group and the checkpoint reader can all raise it
without importing each other; and how a command-line tool turns it into its exit status."""
import sys


class UsageError(Exception):
    """A flag, file or setting the user must change: one line naming it; train.py exits 2 (argparse's status)."""


def run_reporting_usage_errors(prog, work):
    """work()'s exit status; a UsageError is one line "{prog}: error: ..." on stderr and exit status 2."""
    try:
        return work()
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
