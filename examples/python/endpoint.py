#!/usr/bin/env python3
"""A Courier push endpoint in the Python standard library alone.

Courier POSTs each task of a kind declared with an `endpoint` to this server, signed the
Standard Webhooks way with the endpoint's secret; the server checks the signature, runs a function
on the JSON body and answers with the result:

    COURIER_ENDPOINT_SECRET=whsec_... python3 endpoint.py --port 8000 --function upper

The first line on stdout is `listening on http://HOST:PORT` (so `--port 0` can be read back).
Every request is checked before any work:

    webhook-signature  `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`,
                       keyed with the base64 after `whsec_`; several may be given, space-separated.
                       None matching (or none given): 401.
    webhook-timestamp  Unix seconds; more than 5 minutes from this machine's clock: 400.
    webhook-id         the task id, the same on every attempt.

Replays and redeliveries: a successful answer is kept for 5 minutes by webhook-id. A request
with the id of one (a replayed request, or Courier trying again after it lost the answer) gets
that answer again, with `Idempotent-Replayed: true`, and the function does not run twice. One
that arrives while the first is still running waits for its answer. A request older than 5
minutes is refused by its timestamp, so nothing older needs remembering. Failed attempts are
not kept: Courier's next attempt runs the function again.

What the answers mean to Courier: 200 with the function's JSON result, the task succeeded;
422 (the function raised TaskError(retryable=False), or the body is not JSON: 400), it goes to
the dead letters; 503 (TaskError(retryable=True), with Retry-After when it says) or 500 (the
function crashed), it is retried. 401 and 400 above are not retried either: a wrong secret or a
skewed clock shows in the dead letters at once, with the reason in the body.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 5 * 60


class TaskError(Exception):
    """A failed attempt; `retryable` says whether another attempt could succeed."""

    def __init__(self, message, retryable=False, retry_after_s=None):
        super().__init__(message)
        self.retryable, self.retry_after_s = retryable, retry_after_s


def signing_key(secret):
    """The HMAC key of a `whsec_<base64>` secret (a bare base64 secret is read the same way)."""
    secret = secret.strip()
    return base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret, validate=True)


def signature(key, msg_id, timestamp, body):
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, as Courier signs a request."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed(key, msg_id, timestamp, body, header):
    """True when one of the header's space-separated signatures is this body's, in constant time."""
    expected = signature(key, msg_id, timestamp, body).encode()
    # Every candidate is compared, so the time taken does not say which one was close.
    matches = [hmac.compare_digest(c.encode("latin-1"), expected) for c in header.split()]
    return any(matches)


class Answers:
    """Successful answers of the last five minutes by webhook-id, and the runs in progress."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_id = {}  # webhook-id -> {"done": Event, "answer": (status, body) or None, "until": t}

    def claim(self, msg_id):
        """(True, entry) when this request should run the function; (False, entry) when another has."""
        with self._lock:
            now = time.monotonic()
            for old in [k for k, e in self._by_id.items() if e["until"] < now]:
                del self._by_id[old]
            entry = self._by_id.get(msg_id)
            if entry is not None:
                return False, entry
            entry = self._by_id[msg_id] = {"done": threading.Event(), "answer": None, "until": float("inf")}
            return True, entry

    def settle(self, msg_id, entry, answer, keep_s):
        """Keeps a 2xx answer (at least five minutes); forgets a failure, so a retry runs again."""
        with self._lock:
            if 200 <= answer[0] < 300:
                entry["answer"], entry["until"] = answer, time.monotonic() + max(TOLERANCE_S, keep_s)
            else:
                self._by_id.pop(msg_id, None)
        entry["done"].set()


def upper(payload):
    """{"text": "abc"} -> {"text": "ABC"}."""
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise TaskError('payload must be {"text": "<string>"}')
    return {"text": payload["text"].upper()}


def sleep(payload):
    """{"ms": 1000}: sleeps that long (to try Courier's timeouts), then answers {"slept_ms"}."""
    ms = payload.get("ms") if isinstance(payload, dict) else None
    if type(ms) is not int or not 0 <= ms <= 600_000:
        raise TaskError('payload must be {"ms": <0 to 600000>}')
    time.sleep(ms / 1000)
    return {"slept_ms": ms}


def fail(payload):
    """Always fails, for good: the task goes to the dead letters."""
    raise TaskError("the fail function always fails")


FUNCTIONS = {"upper": upper, "sleep": sleep, "fail": fail}


class Endpoint(BaseHTTPRequestHandler):
    """One request: verify, dedupe, run the function, answer."""

    protocol_version = "HTTP/1.1"  # keep-alive: Courier reuses its connections
    key = b""
    function = staticmethod(upper)
    answers = Answers()
    max_body = 64 * 1024 * 1024

    def do_POST(self):
        started = time.monotonic()
        status, body, headers = self.handle_delivery()
        self.send_response(status)
        is_problem = status >= 400
        self.send_header("Content-Type", "application/problem+json" if is_problem else "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        h = self.headers
        task = h.get("Courier-Task-Id") or h.get("webhook-id")
        fields = {"status": status, "task": task, "kind": h.get("Courier-Kind"),
                  "attempt": h.get("Courier-Attempt"), "deadline": h.get("Courier-Deadline"),
                  "duration_ms": round((time.monotonic() - started) * 1000), **headers}
        line = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")

    def handle_delivery(self):
        """(status, body bytes, extra headers) for this request."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return problem(411, "Length Required", "send the body with a Content-Length")
        if int(length) > self.max_body:
            self.close_connection = True
            return problem(413, "Content Too Large", f"bodies are limited to {self.max_body} bytes")
        raw = self.rfile.read(int(length))
        msg_id, timestamp = self.headers.get("webhook-id"), self.headers.get("webhook-timestamp")
        if not msg_id or not timestamp or not (timestamp.isascii() and timestamp.isdigit()):
            return problem(400, "Bad Request", "webhook-id and webhook-timestamp (Unix seconds) are required")
        if not signed(self.key, msg_id, timestamp, raw, self.headers.get("webhook-signature") or ""):
            return problem(401, "Unauthorized", "no valid webhook-signature for this body")
        if abs(time.time() - int(timestamp)) > TOLERANCE_S:
            return problem(400, "Bad Request", "webhook-timestamp is over 5 minutes from this server's clock")
        first, entry = self.answers.claim(msg_id)
        if not first:
            entry["done"].wait(TOLERANCE_S)
            if entry["answer"] is None:
                return problem(503, "Service Unavailable", "an earlier delivery of this task did not succeed",
                               {"Retry-After": "1"})
            status, body = entry["answer"]
            return status, body, {"Idempotent-Replayed": "true"}
        answer = self.run(raw)
        # Kept while this request could be replayed: until its timestamp is 5 minutes old.
        self.answers.settle(msg_id, entry, answer[:2], int(timestamp) + TOLERANCE_S - time.time())
        return answer

    def run(self, raw):
        """Runs the function on the body: the answer that tells Courier how the attempt went."""
        try:
            payload = json.loads(raw)
        except ValueError:
            return problem(400, "Bad Request", "the body is not JSON")
        try:
            return 200, json.dumps(self.function(payload)).encode(), {}
        except TaskError as err:
            if not err.retryable:
                return problem(422, "Unprocessable Content", str(err))
            after = {} if err.retry_after_s is None else {"Retry-After": str(int(err.retry_after_s))}
            return problem(503, "Service Unavailable", str(err), after)
        except Exception as err:  # a bug in the function: retryable, and the server stays up
            return problem(500, "Internal Server Error", f"the function raised {type(err).__name__}")

    def log_message(self, format, *args):
        pass  # one line per request is written by do_POST; no body, no signature


def problem(status, title, detail, headers=None):
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    return status, body.encode(), headers or {}


def main():
    p = argparse.ArgumentParser(description="A Courier push endpoint (standard library only).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (default %(default)s)")
    p.add_argument("--secret", default=os.environ.get("COURIER_ENDPOINT_SECRET"),
                   help="whsec_… signing secret (default: env COURIER_ENDPOINT_SECRET)")
    p.add_argument("--function", choices=sorted(FUNCTIONS), default="upper", help="default %(default)s")
    args = p.parse_args()
    if not args.secret:
        p.error("give the signing secret with --secret or COURIER_ENDPOINT_SECRET")
    try:
        Endpoint.key = signing_key(args.secret)
    except ValueError:
        p.error("the secret must be whsec_ followed by base64")
    Endpoint.function = staticmethod(FUNCTIONS[args.function])
    server = ThreadingHTTPServer((args.host, args.port), Endpoint)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
