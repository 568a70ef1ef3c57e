"""The error every part of training/ raises for something the user must change: one module that imports nothing,
so that the flags (config), the checkpoint files, the process group and the checkpoint reader can all raise it
without importing each other."""


class UsageError(Exception):
    """A flag, file or setting the user must change: one line naming it; train.py exits 2 (argparse's status)."""
