"""The data side's typed errors; only a command's main turns one into an exit status."""


class ShardError(RuntimeError):
    """A shard directory, manifest or shard file that cannot be used; the message names the file."""


class StorageError(ShardError):
    """A remote object that cannot be read; the message names its URL. `missing`: the object does not exist
    (HTTP 404, S3 NoSuchKey, a missing file), as opposed to denied, refused or failing after retries."""

    def __init__(self, message, *, missing=False):
        super().__init__(message)
        self.missing = missing


class ConvertError(Exception):
    """Bad input or output folder for a conversion (shards/convert.py), or counts that do not add up: one line on
    stderr, exit status 2."""


class LoaderFailed(RuntimeError):
    """A loader worker failed for another reason than a damaged shard (out of memory, a cache folder it cannot
    write, killed by the system): the message names the worker, what it raised and where. The data is fine; the
    run ends with exit status 1 rather than a traceback and a worker that never exits."""
