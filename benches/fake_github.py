"""A local stand-in for GitHub's GET /rate_limit, for benches/ratelimits.sh:
answers every token with the documented body and counts requests per token
(GET /_counts returns them as JSON). Standard library only.

    python3 benches/fake_github.py PORT
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {}
lock = threading.Lock()
RESET = int(time.time()) + 3600
BODY = json.dumps(
    {
        "resources": {
            name: {"limit": limit, "used": 1, "remaining": limit - 1, "reset": RESET}
            for name, limit in (
                ("core", 5000),
                ("search", 30),
                ("graphql", 5000),
                ("integration_manifest", 5000),
                ("code_search", 10),
                ("source_import", 100),
                ("code_scanning_upload", 1000),
                ("actions_runner_registration", 10000),
                ("scim", 15000),
                ("dependency_snapshots", 100),
            )
        }
    }
).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/_counts":
            with lock:
                body = json.dumps(counts).encode()
        else:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            with lock:
                counts[token] = counts.get(token, 0) + 1
            body = BODY
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
