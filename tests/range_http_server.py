"""A static file server on loopback with HTTP Range support (Python's http.server has none), for the
object-storage tests. Run as a process of its own, so that it never competes with the code under test for a GIL:

    python tests/range_http_server.py ROOT PORT_FILE [--fail-every N] [--exit-after N] [--deny NAME]
                                      [--stall NAME] [--endless NAME] [--endless-ceiling BYTES]

Writes its port to PORT_FILE once it listens. --fail-every N answers every N-th request with 503 (a store
under load); --exit-after N stops the server after N requests (a store that goes away); --deny NAME answers
403 for files called NAME (a store that refuses the credentials). Every request is
counted in PORT_FILE.count.

Servers that misbehave mid-body, for files called NAME (a HEAD still answers the true size, so that the client
gets as far as the body): --stall NAME sends the headers of a GET's answer (with its Content-Length) and half its
body, then nothing, holding the connection open until the client hangs up; --endless NAME answers every GET,
ranged or not, with 200 and a chunked body that repeats the file without end, until the client hangs up or
--endless-ceiling bytes (default 256 MiB) have gone out, where the body ends properly: a client without a size
cap then holds that much, and a test of it fails instead of exhausting the machine's memory. The body bytes of
each endless answer are written to PORT_FILE.sent when it ends.
"""
import argparse
import http.server
import os
import re
import select
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
        if body and os.path.basename(path) in self.server.endless:
            self._send_endless(path)
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
                data = handle.read(stop - start)
            if os.path.basename(path) in self.server.stall:
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self._wait_for_hang_up()
                return
            self.wfile.write(data)

    def _wait_for_hang_up(self):
        """Silence on an open connection until the client closes it (end of file on the socket)."""
        self.close_connection = True
        try:
            while not select.select([self.connection], [], [], 1.0)[0] or self.connection.recv(65536):
                pass
        except OSError:  # reset by the client: hung up as well
            pass

    def _send_endless(self, path):
        """200 and a chunked body repeating the file, whatever Range asked for (see the module docstring)."""
        self.close_connection = True
        with open(path, "rb") as handle:
            data = handle.read() or b"x"
        piece = (data * (-(-65536 // len(data))))[:65536]
        chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            while sent < self.server.endless_ceiling:
                self.wfile.write(chunk)
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the client hung up: what a client with a size cap does
            pass
        with open(self.server.sent_file, "w") as handle:
            handle.write(str(sent))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("port_file")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--exit-after", type=int, default=0)
    parser.add_argument("--deny", action="append", default=[])
    parser.add_argument("--stall", action="append", default=[])
    parser.add_argument("--endless", action="append", default=[])
    parser.add_argument("--endless-ceiling", type=int, default=256 << 20)
    args = parser.parse_args()
    os.chdir(args.root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.requests = 0
    server.fail_every, server.exit_after, server.deny = args.fail_every, args.exit_after, set(args.deny)
    server.stall, server.endless, server.endless_ceiling = set(args.stall), set(args.endless), args.endless_ceiling
    server.count_file = args.port_file + ".count"
    server.sent_file = args.port_file + ".sent"
    with open(args.port_file + ".tmp", "w") as handle:
        handle.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
