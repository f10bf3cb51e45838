#!/usr/bin/env python3
"""Send payloads through relay with Telethon's MTProxy transports and check the echoes.

Used by relay's tests: the relay forwards to a fake data centre that echoes every frame, so
each payload must come back byte for byte. Prints one JSON line; exit status 0 only if every
echo matched.
"""
import argparse
import asyncio
import collections
import json
import logging
import os
import sys

from telethon.network.connection import tcpmtproxy

TRANSPORTS = {
    "abridged": tcpmtproxy.ConnectionTcpMTProxyAbridged,
    "intermediate": tcpmtproxy.ConnectionTcpMTProxyIntermediate,
    "randomized": tcpmtproxy.ConnectionTcpMTProxyRandomizedIntermediate,
}


async def run_once(args):
    loggers = collections.defaultdict(lambda: logging.getLogger("telethon"))
    # The DC address is not used: an MTProxy connection goes to the proxy.
    conn = TRANSPORTS[args.transport](
        "149.154.167.51", 443, args.dc, loggers=loggers,
        proxy=(args.host, args.port, args.secret),
    )
    if args.local_addr:
        # Connection takes local_addr, but the MTProxy connections' __init__ (TcpMTProxy in
        # tcpmtproxy.py) does not pass it on; Connection._connect still honours the attribute.
        conn._local_addr = (args.local_addr, 0)
    await asyncio.wait_for(conn.connect(timeout=args.timeout), args.timeout + 5)
    echoed = []
    try:
        for size in args.sizes:
            # Telethon's codecs need whole 32-bit words.
            payload = os.urandom(size)
            await conn.send(payload)
            got = await asyncio.wait_for(conn.recv(), args.timeout)
            if got != payload:
                return {"ok": False, "size": size, "got": len(got or b""), "echoed": echoed}
            echoed.append(size)
    except Exception as e:  # keep what was echoed before the failure
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "echoed": echoed}
    finally:
        await conn.disconnect()
    return {"ok": True, "echoed": echoed}


async def run(args):
    """One connection, or --connections of them, at most --parallel at a time."""
    if args.connections == 1:
        return await run_once(args)
    limit = asyncio.Semaphore(args.parallel)

    async def one():
        async with limit:
            try:
                return await run_once(args)
            except Exception as e:  # report which connection failed, and how
                return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    results = await asyncio.gather(*(one() for _ in range(args.connections)))
    echoed = [size for r in results for size in r.get("echoed", [])]
    failed = [i for i, r in enumerate(results) if not r["ok"]]
    if failed:
        return {**results[failed[0]], "echoed": echoed, "failed_connections": failed}
    return {"ok": True, "echoed": echoed, "connections": args.connections}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret", required=True, help="hex, with dd prefix for secure mode")
    p.add_argument("--dc", type=int, default=2)
    p.add_argument("--transport", choices=sorted(TRANSPORTS), required=True)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16])
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--local-addr", help="source address to connect from (e.g. 127.0.0.2)")
    p.add_argument("--connections", type=int, default=1,
                   help="connect, echo and close this many times")
    p.add_argument("--parallel", type=int, default=1,
                   help="with --connections: how many may be open at once")
    args = p.parse_args()
    for size in args.sizes:
        if size % 4 or size < 8:
            p.error(f"size {size}: Telethon needs multiples of 4, at least 8")
    logging.basicConfig(level=logging.WARNING)
    try:
        result = asyncio.run(run(args))
    except Exception as e:  # report any client failure as data for the test
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
