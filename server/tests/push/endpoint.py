#!/usr/bin/env python3
"""A push endpoint for Courier's tests: a real HTTP server whose answer the payload decides.

Usage: endpoint.py LOG_FILE. It listens on a free loopback port, prints that port on its first
line of output, and appends one JSON line to LOG_FILE for every request it reads
({"event": "request", "task", "attempt", "headers", "body", "in_flight", "at"}) and for every
client that hung up before its answer ({"event": "closed", "task", "at"}).

The payload (JSON) says what to answer:
  {"answer": 200, "reply": {...}}       that status, with `reply` as a JSON body
  {"answer": 503, "retry_after": 1, "times": 1}
                                        that status (and Retry-After: its value, seconds or a
                                        date) for the task's first `times` requests, then 200;
                                        without `times`, always
  {"answer": 422, "text": "..."}        that status with a text/plain body
  {"answer": 200, "bare": "..."}        that status with that body and no Content-Type
  {"answer": 302, "location": "..."}    a redirect
  {"answer": "sleep", "ms": 5000}       wait that long, then 200 (logs "closed" if the client
                                        hangs up first)
  {"answer": "reset"}                   drop the connection without an answer (TCP reset)
"""

import json
import select
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_LOCK = threading.Lock()
STATE_LOCK = threading.Lock()
REQUESTS_PER_TASK = {}
IN_FLIGHT = [0]


def log(entry):
    entry["at"] = time.time()
    with LOG_LOCK, open(sys.argv[1], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        task = self.headers.get("courier-task-id", "")
        with STATE_LOCK:
            REQUESTS_PER_TASK[task] = seen = REQUESTS_PER_TASK.get(task, 0) + 1
            IN_FLIGHT[0] += 1
            in_flight = IN_FLIGHT[0]
        try:
            log({
                "event": "request",
                "task": task,
                "attempt": self.headers.get("courier-attempt"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", errors="replace"),
                "in_flight": in_flight,
            })
            try:
                payload = json.loads(body)
            except ValueError:
                payload = {}
            self.answer(payload if isinstance(payload, dict) else {}, task, seen)
        finally:
            with STATE_LOCK:
                IN_FLIGHT[0] -= 1

    def answer(self, payload, task, seen):
        answer = payload.get("answer", 200)
        if answer == "sleep":
            if self.hung_up_within(payload.get("ms", 1000) / 1000):
                log({"event": "closed", "task": task})
                self.close_connection = True
                return
            return self.reply(200, "application/json", json.dumps({"slept_ms": payload.get("ms")}))
        if answer == "reset":
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        times = payload.get("times")
        if not 200 <= answer < 300 and times is not None and seen > times:
            answer = 200
        headers = {}
        if "retry_after" in payload and not 200 <= answer < 300:
            headers["Retry-After"] = str(payload["retry_after"])
        if "location" in payload:
            headers["Location"] = payload["location"]
        if "text" in payload:
            return self.reply(answer, "text/plain; charset=utf-8", payload["text"], headers)
        if "bare" in payload:
            return self.reply(answer, None, payload["bare"], headers)
        reply = payload.get("reply", {"attempt": seen})
        self.reply(answer, "application/json", json.dumps(reply), headers)

    def hung_up_within(self, seconds):
        """Waits up to `seconds`; True as soon as the client closes its end."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except ConnectionError:
                    return True
        return False

    def reply(self, status, content_type, text, headers=None):
        data = text.encode("utf-8")
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
