#!/usr/bin/env python3
"""Send payloads through relay in fake-TLS (ee) mode with kurigram and check the echoes.

kurigram (a Pyrogram fork) is the installable client that speaks fake-TLS: it sends a modern
~1.8 KB ClientHello and verifies the ServerHello HMAC. Its recv strips padding as if payloads
were MTProto messages, so payload sizes are 24 + 16*k with a non-zero first byte. Prints one
JSON line; exit status 0 only if every echo matched.
"""
import argparse
import asyncio
import json
import logging
import os
import sys

from pyrogram.connection.proxy import normalize_proxy
from pyrogram.connection.transport.tcp import TCPIntermediatePadded


async def run_once(args):
    link = f"tg://proxy?server={args.host}&port={args.port}&secret={args.secret}"
    transport = TCPIntermediatePadded(proxy=normalize_proxy(link), dc_id=args.dc)
    # The address is not used: an MTProxy connection goes to the proxy.
    await asyncio.wait_for(transport.connect(("149.154.167.51", 443)), args.timeout)
    echoed = []
    try:
        for size in args.sizes:
            payload = bytes([1 + os.urandom(1)[0] % 255]) + os.urandom(size - 1)
            await transport.send(payload)
            got = await asyncio.wait_for(transport.recv(), args.timeout)
            if got != payload:
                return {"ok": False, "size": size, "got": len(got or b""), "echoed": echoed}
            echoed.append(size)
    finally:
        await transport.close()
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
    p.add_argument("--secret", required=True, help="ee + secret hex + domain hex")
    p.add_argument("--dc", type=int, default=2)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[24])
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--connections", type=int, default=1,
                   help="connect, echo and close this many times")
    p.add_argument("--parallel", type=int, default=1,
                   help="with --connections: how many may be open at once")
    args = p.parse_args()
    for size in args.sizes:
        if size < 24 or (size - 24) % 16:
            p.error(f"size {size}: kurigram needs 24 + 16*k")
    logging.basicConfig(level=logging.WARNING)
    try:
        result = asyncio.run(run(args))
    except Exception as e:  # report any client failure as data for the test
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
