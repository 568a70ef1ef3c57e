"""A static file server on loopback with HTTP Range support (Python's http.server has none), for the
object-storage tests. Run as a process of its own, so that it never competes with the code under test for a GIL:

    python tests/range_http_server.py ROOT PORT_FILE [--fail-every N] [--exit-after N] [--deny NAME]

Writes its port to PORT_FILE once it listens. --fail-every N answers every N-th request with 503 (a store
under load); --exit-after N stops the server after N requests (a store that goes away); --deny NAME answers
403 for files called NAME (a store that refuses the credentials). Every request is
counted in PORT_FILE.count.
"""
import argparse
import http.server
import os
import re
import threading

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _fault(self):
        with self.server.lock:
            self.server.requests += 1
            number = self.server.requests
            with open(self.server.count_file, "w") as handle:
                handle.write(str(number))
        if self.server.exit_after and number > self.server.exit_after:
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            self.close_connection = True
            return True
        if self.server.fail_every and number % self.server.fail_every == 0:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body):
        if self._fault():
            return
        path = self.translate_path(self.path)
        if os.path.basename(path) in self.server.deny:
            self.send_error(403)
            return
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, stop, status = 0, size, 200
        match = _RANGE.match(self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            stop = min(size, int(match.group(2)) + 1) if match.group(2) else size
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(stop - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        if body:
            with open(path, "rb") as handle:
                handle.seek(start)
                self.wfile.write(handle.read(stop - start))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("port_file")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--exit-after", type=int, default=0)
    parser.add_argument("--deny", action="append", default=[])
    args = parser.parse_args()
    os.chdir(args.root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.requests = 0
    server.fail_every, server.exit_after, server.deny = args.fail_every, args.exit_after, set(args.deny)
    server.count_file = args.port_file + ".count"
    with open(args.port_file + ".tmp", "w") as handle:
        handle.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
