#!/usr/bin/env python3
"""Run TDLib's own `testProxy` through relay against the echoing fake DC.

TDLib (the official library, PyPI `tdjson`) connects through the proxy to the DC and sends
`req_pq_multi` (constructor 0xbe7e8ef1). The fake DC echoes it, so TDLib reads its own request
as the answer and fails with "Wrong constructor -1099002127": proof of a full round trip
through the proxy's handshake and both directions of the relay. Any other outcome (a timeout,
a connection error, a success) means the round trip did not happen. Prints one JSON line;
exit status 0 only for the echo.
"""
import argparse
import json
import os
import time

import tdjson

# req_pq_multi, as a signed 32-bit integer: TDLib's message for its own request echoed back.
ECHOED = "Wrong constructor -1099002127"


def request(client, query, extra):
    query = dict(query, **{"@extra": extra})
    tdjson.td_send(client, json.dumps(query).encode())


def wait_for(client, extra, deadline):
    """The answer tagged `extra`, or None at the deadline."""
    while time.monotonic() < deadline:
        raw = tdjson.td_receive(min(1.0, max(0.0, deadline - time.monotonic())))
        if not raw:
            continue
        event = json.loads(raw)
        if event.get("@extra") == extra:
            return event
    return None


def close(client):
    """Closes the TDLib instance, waiting (bounded) until it says it is closed."""
    request(client, {"@type": "close"}, "close")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        raw = tdjson.td_receive(0.5)
        if not raw:
            continue
        state = json.loads(raw).get("authorization_state", {})
        if state.get("@type") == "authorizationStateClosed":
            return


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="link secret (hex, dd/ee prefixes)")
    parser.add_argument("--dc", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    tdjson.td_execute(
        json.dumps({"@type": "setLogVerbosityLevel", "new_verbosity_level": 1}).encode()
    )
    client = tdjson.td_create_client_id()
    deadline = time.monotonic() + args.timeout + 10
    request(
        client,
        {
            "@type": "testProxy",
            "proxy": {
                "@type": "proxy",
                "server": args.host,
                "port": args.port,
                "type": {"@type": "proxyTypeMtproto", "secret": args.secret},
            },
            "dc_id": args.dc,
            "timeout": args.timeout,
        },
        "test",
    )
    answer = wait_for(client, "test", deadline)
    close(client)
    if answer is None:
        result = {"ok": False, "error": "no answer from TDLib"}
    elif answer.get("@type") == "error" and ECHOED in answer.get("message", ""):
        result = {"ok": True, "echoed": answer["message"]}
    else:
        result = {"ok": False, "error": json.dumps(answer)}
    print(json.dumps(result), flush=True)
    # Skip interpreter teardown: TDLib's threads may still be running and crash it.
    os._exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
