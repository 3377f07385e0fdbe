#!/usr/bin/env python3
"""A Courier pull worker in the Python standard library alone.

It leases tasks of a queue over Courier's HTTP API, runs a function on each while a heartbeat
renews the lease and reports progress, then completes or fails the task (`--help` for options):

    python3 worker.py --url http://127.0.0.1:3000 --queue default --kinds my.kind --function upper

COURIER_TOKEN, when set, is sent as `Authorization: Bearer <token>`.

A function takes (payload, task, ctx): the payload (JSON, or bytes for a raw upload), the
TaskView as a dict, and the lease, whose `ctx.progress(percent)` reports progress and whose
`ctx.wait(seconds)` raises Cancelled once the task is cancelled, its lease lost or the worker
stopping. It returns a JSON-serialisable result or raises TaskError(message, retryable,
retry_after_ms); any other exception fails the attempt as retryable. Delivery is at least once
(a lost lease is taken over), so a function must be safe to run twice.

SIGTERM/SIGINT: no new leases; running functions are told to stop, every held lease is released
(the attempt does not count) and the worker exits 0 when its lease request in flight returns
(within --wait-ms; what it brings is released too). Logs: stderr, one line per event (leased,
succeeded, failed, released, lost); never payloads, and lease tokens only with --log-tokens (a
token lets its holder end the task: for debugging).
"""

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

# What a request that got no answer raises (refused, reset, timed out, DNS).
NETWORK_ERRORS = (OSError, http.client.HTTPException)


class TaskError(Exception):
    """A failed attempt; `retryable` says whether another attempt could succeed."""

    def __init__(self, message, retryable=True, retry_after_ms=None):
        super().__init__(message)
        self.retryable, self.retry_after_ms = retryable, retry_after_ms


class Cancelled(Exception):
    """The task was cancelled, its lease lost, or the worker is stopping: stop working on it."""


def log(event, **fields):
    """Writes one line to stderr: time, event, then key=value (values with spaces quoted)."""
    parts = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), event]
    for key, value in fields.items():
        text = str(value)
        parts.append(f"{key}={json.dumps(text) if not text or ' ' in text else text}")
    sys.stderr.write(" ".join(parts) + "\n")
    sys.stderr.flush()


def problem(status, body):
    """A refusal in a few words: the problem+json title and detail, else the body's start."""
    try:
        doc = json.loads(body)
        return f"{status} {doc.get('title', '')}: {doc.get('detail', '')}"
    except (ValueError, AttributeError):
        return f"{status} {body[:200].decode('utf-8', 'replace')}"


def seconds_until(stamp):
    """Seconds from now to an RFC 3339 time, or None if it cannot be read."""
    # Python before 3.11 reads neither "Z" nor fractions of other than 3 or 6 digits.
    m = re.fullmatch(r"([^.]+?)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)", stamp or "")
    try:
        offset = "+00:00" if m[3] in ("Z", "z") else m[3]
        at = datetime.fromisoformat(f"{m[1]}.{(m[2] or '')[:6].ljust(6, '0')}{offset}")
    except (TypeError, ValueError):
        return None
    return at.timestamp() - time.time()


class Api:
    """Courier's HTTP API: JSON in; status, headers and body bytes out."""

    def __init__(self, base, token):
        self.base, self.token = base.rstrip("/"), token

    def request(self, method, path, body=None, timeout=10.0):
        """Sends one request; raises one of NETWORK_ERRORS when no answer came."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = path if path.startswith(("http://", "https://")) else self.base + path
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.headers, err.read()


class Lease:
    """One leased task: its token, cancel flag and progress, and the one call that ends it."""

    def __init__(self, api, grant, lease_ms):
        self.api, self.grant, self.task = api, grant, grant.get("task") or {}
        self.path = "/api/v1/leases/" + urllib.parse.quote(grant["token"], safe="")
        self.cancel, self.ended, self.percent = threading.Event(), threading.Event(), None
        self.why = "cancelled"  # why the function was told to stop, for the log
        self._end_lock = threading.Lock()
        self.fields = {"task": self.task.get("id"), "kind": self.task.get("kind"),
                       "attempt": self.task.get("attempts")}
        seconds = lease_ms / 1000 if lease_ms else seconds_until(grant.get("expires_at"))
        # Three beats per lease, and one a second at least, so progress shows and cancels are seen.
        self.interval = min(1.0, max(0.1, (seconds or 30.0) / 3))

    def progress(self, percent):
        """Reports progress (0-100); the next heartbeat carries it."""
        self.percent = max(0, min(100, int(percent)))

    def wait(self, seconds):
        """Sleeps up to `seconds`; raises Cancelled as soon as the task should stop."""
        if self.cancel.wait(seconds):
            raise Cancelled()

    def _take_end(self):
        """True for the first caller only: a lease is ended once, by whoever comes first."""
        with self._end_lock:
            first = not self.ended.is_set()
            self.ended.set()
            return first

    def lost(self, why):
        """Drops the task without a word to Courier: the lease is no longer ours."""
        self.cancel.set()
        if self._take_end():
            log("lost", **self.fields, reason=why)

    def end(self, action, body=None, **why):
        """Sends complete, fail or release, unless the lease has ended already."""
        if not self._take_end():
            return
        try:
            status, _, raw = self.api.request("POST", f"{self.path}/{action}", body)
        except NETWORK_ERRORS as err:  # not resent: the lease expires and the task runs again
            return log("lost", **self.fields, reason=f"{action}: {err}")
        if 200 <= status < 300:
            event = {"complete": "succeeded", "fail": "failed", "release": "released"}[action]
            log(event, **self.fields, **why)
        else:
            log("lost", **self.fields, reason=f"{action}: {problem(status, raw)}")


def heartbeat(lease):
    """Renews `lease` with its progress every interval until it ends; acts on 409 and cancels."""
    while not lease.ended.wait(lease.interval):
        body = {} if lease.percent is None else {"progress": lease.percent}
        try:
            status, _, raw = lease.api.request("POST", f"{lease.path}/heartbeat", body, timeout=5.0)
            answer = json.loads(raw) if 200 <= status < 300 else {}
        except NETWORK_ERRORS + (ValueError,) as err:
            log("heartbeat-error", **lease.fields, error=err)  # the next beat tries again
            continue
        if status in (404, 409):  # taken over, ended, or a token the server cannot read
            lease.lost(problem(status, raw))
        elif not 200 <= status < 300:
            log("heartbeat-error", **lease.fields, error=problem(status, raw))
        elif isinstance(answer, dict) and answer.get("cancel_requested") is True:
            lease.why = "cancel requested"
            lease.cancel.set()
            lease.end("release", reason=lease.why)


def load_payload(lease):
    """The payload: inline in the grant, or fetched from its payload_url (bytes unless JSON)."""
    if "payload" in lease.grant:
        return lease.grant["payload"]
    try:
        status, headers, raw = lease.api.request("GET", lease.grant["payload_url"], timeout=60.0)
    except NETWORK_ERRORS as err:
        raise TaskError(f"fetching the payload: {err}") from err
    if status != 200:
        raise TaskError(f"fetching the payload: {problem(status, raw)}", retryable=status >= 500)
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return json.loads(raw) if content_type == "application/json" else raw


def run(lease, function):
    """Runs one task: heartbeats beside it, then one complete, fail or release."""
    threading.Thread(target=heartbeat, args=(lease,), daemon=True).start()
    try:
        result = function(load_payload(lease), lease.task, lease)
    except Cancelled:
        lease.end("release", reason=lease.why)
    except TaskError as err:
        body = {"error": str(err), "retryable": err.retryable}
        if err.retry_after_ms is not None:
            body["retry_after_ms"] = err.retry_after_ms
        lease.end("fail", body, error=err, retryable=err.retryable)
    except Exception as err:  # a bug in the function fails the attempt, never the worker
        message = f"{type(err).__name__}: {err}"
        lease.end("fail", {"error": message, "retryable": True}, error=message, retryable=True)
    else:
        lease.end("complete", result)


class Worker:
    """Takes leases for its free slots, runs each on a thread, and hands them back on stop."""

    def __init__(self, api, args, function):
        self.api, self.args, self.function = api, args, function
        self.held = {}  # token -> Lease of every task running here
        self.slots = threading.Condition()
        self.stop = threading.Event()
        self.fatal = None

    def poll(self):
        """The lease loop: asks for as many tasks as there are free slots; backs off on errors."""
        args, backoff = self.args, 0.5
        path = f"/api/v1/queues/{urllib.parse.quote(args.queue, safe='')}/leases"
        while not self.stop.is_set():
            with self.slots:
                while len(self.held) >= args.concurrency and not self.stop.is_set():
                    self.slots.wait(0.5)
                free = args.concurrency - len(self.held)
            if self.stop.is_set():
                return
            # host, pid and version are what GET /api/v1/workers and the Workers page show.
            body = {"worker": args.worker_id, "max": min(free, args.max or free),
                    "wait_ms": args.wait_ms, "kinds": args.kinds, "lease_ms": args.lease_ms,
                    "host": socket.gethostname(), "pid": os.getpid(), "version": "python-example"}
            body = {k: v for k, v in body.items() if v is not None}
            headers, timeout = {}, args.wait_ms / 1000 + 10
            try:
                status, headers, raw = self.api.request("POST", path, body, timeout)
                if status == 200:
                    self.start(json.loads(raw)["leases"])
                    backoff = 0.5
                    continue
                error = problem(status, raw)
            except NETWORK_ERRORS + (ValueError, KeyError, TypeError) as err:
                status, error = None, f"{type(err).__name__}: {err}"
            # Our request is wrong, or our token is unknown (401), lacks `work` (403) or does not
            # reach the queue (404): waiting will not fix it.
            if status in (400, 401, 403, 404, 422):
                self.fatal = error
                log("stopping", reason=f"lease request refused: {error}")
                return self.stop.set()
            retry_after = str(headers.get("Retry-After") or "")
            seconds = retry_after.isascii() and retry_after.isdigit()
            delay = max(backoff, float(retry_after)) if seconds else backoff
            log("lease-error", error=error, retry_in_s=round(delay, 1))
            self.stop.wait(delay * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 30.0)

    def start(self, grants):
        """Runs each granted task on its own thread, or releases it when stopping."""
        leases = [Lease(self.api, grant, self.args.lease_ms) for grant in grants]
        with self.slots:  # checked under the lock shutdown() takes: no lease slips between
            stopping = self.stop.is_set()
            if not stopping:
                self.held.update((lease.grant["token"], lease) for lease in leases)
        for lease in leases:
            extra = {"token": lease.grant["token"]} if self.args.log_tokens else {}
            log("leased", **lease.fields, queue=lease.task.get("queue"), **extra)
            if stopping:
                lease.end("release", reason="shutdown")
            else:
                threading.Thread(target=self.run, args=(lease,), daemon=True).start()

    def run(self, lease):
        try:
            run(lease, self.function)
        finally:
            with self.slots:
                self.held.pop(lease.grant["token"], None)
                self.slots.notify()

    def shutdown(self):
        """Tells every running function to stop and releases every held lease."""
        with self.slots:
            leases = list(self.held.values())
        for lease in leases:
            lease.why = "shutdown"
            lease.cancel.set()
        for lease in leases:
            lease.end("release", reason="shutdown")


def upper(payload, task, ctx):
    """{"text": "abc"} -> {"text": "ABC"}."""
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise TaskError('payload must be {"text": "<string>"}', retryable=False)
    return {"text": payload["text"].upper()}


def sleep(payload, task, ctx):
    """{"ms": 3000, "fail"?: true}: sleeps in steps with progress; fails at the end if asked."""
    ms = payload.get("ms") if isinstance(payload, dict) else None
    if type(ms) is not int or ms < 0:
        raise TaskError('payload must be {"ms": <milliseconds>, "fail"?: <bool>}', retryable=False)
    started = time.monotonic()
    while (elapsed := (time.monotonic() - started) * 1000) < ms:
        ctx.progress(elapsed * 100 / ms)
        ctx.wait(min(0.1, (ms - elapsed) / 1000))
    ctx.progress(100)
    if payload.get("fail") is True:
        raise TaskError('failed as asked ("fail": true)', retryable=True)
    return {"slept_ms": ms}


def fail(payload, task, ctx):
    """Always fails, for good: the task goes to the dead letters."""
    raise TaskError("the fail function always fails", retryable=False)


FUNCTIONS = {"upper": upper, "sleep": sleep, "fail": fail}


def parse_args():
    p = argparse.ArgumentParser(description="A Courier pull worker (standard library only).")
    arg = p.add_argument
    arg("--url", default=os.environ.get("COURIER_URL", "http://127.0.0.1:3000"),
        help="Courier's base URL (env COURIER_URL; default %(default)s)")
    arg("--queue", default="default", help="the queue to lease from (default %(default)s)")
    arg("--kinds", type=lambda s: [k for k in s.split(",") if k],
        help="comma-separated kinds to lease (default: any kind of the queue)")
    arg("--concurrency", type=int, default=4, help="tasks run at once (default %(default)s)")
    arg("--max", type=int, help="leases asked for at once, 1-100 (default: the free slots)")
    arg("--wait-ms", type=int, default=5000, help="long-poll wait, 0-30000 (default %(default)s)")
    arg("--lease-ms", type=int, help="lease length, 1000 up to the server's --lease (its default)")
    arg("--worker-id", default=f"{socket.gethostname()}-{os.getpid()}", help="default: host-pid")
    arg("--function", choices=sorted(FUNCTIONS), default="upper", help="default %(default)s")
    arg("--log-tokens", action="store_true",
        help="log each lease's token (it lets its holder end the task: for debugging only)")
    args = p.parse_args()
    if args.concurrency < 1 or not 1 <= (args.max or 1) <= 100 or not 0 <= args.wait_ms <= 30000:
        p.error("--concurrency must be at least 1, --max 1 to 100, --wait-ms 0 to 30000")
    return args


def main():
    args = parse_args()
    worker = Worker(Api(args.url, os.environ.get("COURIER_TOKEN")), args, FUNCTIONS[args.function])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    log("started", worker=args.worker_id, queue=args.queue, function=args.function, url=args.url)
    poller = threading.Thread(target=worker.poll, daemon=True)
    poller.start()
    while not worker.stop.wait(0.5):
        pass
    worker.shutdown()
    poller.join(args.wait_ms / 1000 + 15)  # its lease request in flight: what it brings is released
    log("stopped", worker=args.worker_id)
    return 2 if worker.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
