"""A local fake tool (an HTTP webhook target) that keeps score of side effects.

It behaves like a well-behaved real tool: a request carrying an Idempotency-Key it
has already applied is answered with the stored result and is NOT a new side effect.
So it counts two things per key:

* ``requests``: raw deliveries (a redelivered task, a retry after a crash): fine;
* ``effects``:  side effects actually applied: must never exceed one per key.

It also counts effects per ``proposal_id`` from the body (a second execution row for
one proposal would show up here with a different key), and ``overlaps``: a request
arriving while another with the same key is still in flight, which the worker's row
claim must make impossible.

Paths:
  POST /tool            apply (after ``fail_first`` global 503s)
  POST /flaky/<n>       the first <n> requests of each key get 503, then apply
  POST /status/<code>   always answer <code> (no effect)
  GET  /stats           the counters as JSON

Stdlib only; run standalone with ``python bench/fake_tool_server.py --port 8765``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeToolServer:
    def __init__(self, *, fail_first: int = 0, delay: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.fail_first = fail_first
        self.delay = delay
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.effects: Counter[str] = Counter()
        self.effects_by_proposal: Counter[int] = Counter()
        self.attempts_by_key: Counter[str] = Counter()
        self.request_times: dict[str, list[float]] = {}
        self.missing_key = 0
        self.failed_503 = 0
        self.overlaps = 0
        self._in_flight: Counter[str] = Counter()
        self._results: dict[str, dict[str, Any]] = {}
        self._served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: thousands of requests per campaign

            def _reply(self, code: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # The caller died mid-request (a SIGKILLed worker): the effect, if
                    # any, is applied; its retry with the same key will be a replay.
                    self.close_connection = True

            def do_GET(self) -> None:
                if self.path == "/stats":
                    self._reply(200, server.stats())
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                key = self.headers.get("Idempotency-Key") or ""
                code, payload = server.handle(self.path, key, body)
                self._reply(code, payload)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ behaviour

    def handle(self, path: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._served += 1
            served = self._served
            if not key:
                self.missing_key += 1
                return 400, {"error": "Idempotency-Key header is required"}
            self.requests[key] += 1
            self.attempts_by_key[key] += 1
            self.request_times.setdefault(key, []).append(time.monotonic())
            if self._in_flight[key]:
                self.overlaps += 1
            self._in_flight[key] += 1
        try:
            if self.delay:
                time.sleep(self.delay)
            if path.startswith("/status/"):
                code = int(path.rsplit("/", 1)[1])
                return code, {"error": f"forced {code}"}
            if served <= self.fail_first:
                with self._lock:
                    self.failed_503 += 1
                return 503, {"error": "try again"}
            if path.startswith("/flaky/"):
                fail_per_key = int(path.rsplit("/", 1)[1])
                with self._lock:
                    if self.attempts_by_key[key] <= fail_per_key:
                        self.failed_503 += 1
                        return 503, {"error": "try again"}
            with self._lock:
                stored = self._results.get(key)
                if stored is not None:
                    return 200, {**stored, "replayed": True}
                self.effects[key] += 1
                proposal_id = body.get("proposal_id")
                if isinstance(proposal_id, int):
                    self.effects_by_proposal[proposal_id] += 1
                result = {"ok": True, "effect": sum(self.effects.values()), "key": key}
                self._results[key] = result
            return 200, result
        finally:
            with self._lock:
                self._in_flight[key] -= 1

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/tool") -> str:
        return f"{self.base_url}{path}"

    def start(self) -> FakeToolServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-tool",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.effects.clear()
            self.effects_by_proposal.clear()
            self.attempts_by_key.clear()
            self.request_times.clear()
            self._results.clear()
            self.missing_key = self.failed_503 = self.overlaps = self._served = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self.requests.values()),
                "keys": len(self.requests),
                "effects": sum(self.effects.values()),
                "keys_with_repeated_requests": sum(1 for n in self.requests.values() if n > 1),
                "keys_with_multiple_effects": sum(1 for n in self.effects.values() if n > 1),
                "proposals_with_multiple_effects": sum(
                    1 for n in self.effects_by_proposal.values() if n > 1),
                "overlapping_same_key_requests": self.overlaps,
                "failed_503": self.failed_503,
                "missing_key": self.missing_key,
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeToolServer(port=args.port, fail_first=args.fail_first, delay=args.delay)
    print(f"fake tool server on {server.base_url} (GET /stats)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
