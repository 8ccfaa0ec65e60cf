#!/usr/bin/env python3
"""Serve the repository on 127.0.0.1 for the web playground, and take the browser test's
reports: POST /report/<name> stores the request body as OUT/<name> (results.json, PNG
captures of the canvases, progress.log lines appended).

    python3 scripts/web_server.py [--port 8000] [--root .] [--out DIR]

GET serves files under --root (the page is /web/www/index.html, the golden data /golden/...).
Only 127.0.0.1 is bound: nothing is reachable from other machines.
"""

import argparse
import functools
import http.server
import os
import re
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
        ".gz": "application/octet-stream",
    }

    def __init__(self, *args, out=None, **kwargs):
        self.out = out
        super().__init__(*args, **kwargs)

    def end_headers(self):
        # Always the current build: no stale wasm or script from the browser's cache.
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_POST(self):
        m = re.fullmatch(r"/report/([A-Za-z0-9_.-]+)", self.path)
        if self.out is None or m is None:
            self.send_error(404, "POST only to /report/<name> when --out is given")
            return
        length = int(self.headers.get("Content-Length", "0"))
        if length > 64 << 20:
            self.send_error(413, "report too large")
            return
        body = self.rfile.read(length)
        name = m.group(1)
        mode = "ab" if name.endswith(".log") else "wb"
        tmp = os.path.join(self.out, name + (".part" if mode == "wb" else ""))
        with open(tmp, mode) as f:
            f.write(body)
            if mode == "ab":
                f.write(b"\n")
        if mode == "wb":
            os.replace(tmp, os.path.join(self.out, name))  # readers never see half a file
        self.send_response(204)
        self.end_headers()

    def log_message(self, fmt, *args):
        if os.environ.get("WEB_SERVER_VERBOSE"):
            super().log_message(fmt, *args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--out", default=None, help="folder for POSTed reports")
    args = ap.parse_args()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    handler = functools.partial(Handler, directory=os.path.abspath(args.root), out=args.out)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    port = server.server_address[1]
    print(f"serving {os.path.abspath(args.root)} on http://127.0.0.1:{port}/web/www/index.html",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
