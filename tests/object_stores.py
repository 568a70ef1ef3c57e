"""Real object stores on loopback for the tests, each in a process of its own: moto's standalone S3 server,
tests/range_http_server.py (static files with HTTP Range support and optional faults) and Python's own
`python -m http.server` (a ThreadingHTTPServer with SimpleHTTPRequestHandler, which ignores Range)."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

from ports import unclaimed_port

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "shards-bucket"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _wait_for_port(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class S3Server:
    """moto's S3 server (`python -m moto.server`); env() is what a client needs to reach it."""

    def __init__(self):
        self.port = unclaimed_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.proc)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        import boto3
        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                                   aws_secret_access_key="testing", region_name="us-east-1")
        self.client.create_bucket(Bucket=BUCKET)

    def env(self):
        return dict(S3_ENV, AWS_ENDPOINT_URL=self.endpoint)

    def upload(self, folder, prefix):
        """Uploads every file of `folder` under `prefix`; returns the s3:// URL of the prefix."""
        for name in sorted(os.listdir(folder)):
            if name.startswith(".") or not os.path.isfile(os.path.join(folder, name)):
                continue  # make_shards' lock folder
            self.client.upload_file(os.path.join(folder, name), BUCKET, f"{prefix}/{name}")
        return f"s3://{BUCKET}/{prefix}"

    def put(self, prefix, name, data):
        self.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=data)

    def delete(self, prefix, name):
        self.client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{name}")

    def close(self):
        self.proc.kill()
        self.proc.wait()


class _ServerProcess:
    """A server in a process of its own, ended with the test (a context manager)."""

    def close(self):
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HttpServer(_ServerProcess):
    """tests/range_http_server.py serving a copy of `folder`; url is where the copy is served."""

    def __init__(self, folder, work_dir, *flags):
        self.root = os.path.join(work_dir, "served")
        if not os.path.exists(self.root):
            shutil.copytree(folder, os.path.join(self.root, "shards"))
        self.port_file = os.path.join(work_dir, f"port-{time.monotonic_ns()}")
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "range_http_server.py"), self.root,
                                      self.port_file, *map(str, flags)])
        deadline = time.time() + 30
        while not os.path.exists(self.port_file):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.05)
        with open(self.port_file) as handle:
            self.port = int(handle.read())
        self.url = f"http://127.0.0.1:{self.port}/shards"
        self.folder = os.path.join(self.root, "shards")

    def requests(self):
        try:
            with open(self.port_file + ".count") as handle:
                return int(handle.read() or 0)
        except FileNotFoundError:
            return 0

    def endless_bytes_sent(self):
        """Body bytes of the last --endless answer, once it ended (None before): how far the client read."""
        try:
            with open(self.port_file + ".sent") as handle:
                return int(handle.read())
        except (FileNotFoundError, ValueError):
            return None


class StaticHttpServer(_ServerProcess):
    """`python -m http.server` serving a copy of `folder`: every GET answers 200 with the whole file, Range or
    not, as many simple static servers do."""

    def __init__(self, folder, work_dir):
        self.root = os.path.join(work_dir, "served-static")
        self.folder = os.path.join(self.root, "shards")
        if not os.path.exists(self.root):
            shutil.copytree(folder, self.folder)
        self.port = unclaimed_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                      self.root, str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}/shards"
