"""Schemathesis hooks for Courier's OpenAPI test (server/tests/openapi/main.rs).

- A lease request long-polls for up to `wait_ms` (the document allows 30,000 ms, which is
  true), and a fuzzer that waited that long on every example would take hours: a valid
  `wait_ms` above 50 ms is sent as 50 ms. A value outside the documented range is left as it
  is, so that a case meant to be invalid stays invalid.
- The fuzzer's own token (named by COURIER_FUZZ_TOKEN_NAME) is not revoked under it: a
  `DELETE /api/v1/tokens/{name}` of that name is sent for another name.
"""

import os

import schemathesis

LONGEST_WAIT_MS = 50
OWN_TOKEN = os.environ.get("COURIER_FUZZ_TOKEN_NAME", "schemathesis")


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    if path.endswith("/leases") and isinstance(case.body, dict):
        wait = case.body.get("wait_ms")
        number = isinstance(wait, (int, float)) and not isinstance(wait, bool)
        if number and LONGEST_WAIT_MS < wait <= 30_000 and wait == int(wait):
            case.body["wait_ms"] = LONGEST_WAIT_MS
    if path == "/api/v1/tokens/{name}" and (case.path_parameters or {}).get("name") == OWN_TOKEN:
        case.path_parameters["name"] = OWN_TOKEN + "-not"
