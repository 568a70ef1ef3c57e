"""The data side's facts, one module each: the shard format (format.py), reading shard files from a folder or
object storage (storage.py, read.py), the manifest (manifest.py), the typed errors (errors.py), atomic writes and
the user cache folder (files.py), and the conversion of an ImageNet folder into shards (convert.py with
sources.py, outdir.py, plan.py, workers.py, writer.py, imagecheck.py) that tools/make_shards.py runs. pipeline/
reads what these describe; nothing here imports pipeline/ or tools/."""
