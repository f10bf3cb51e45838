"""Capture reference vectors for relay-proto from real third-party client code.

Usage (writes /tmp/vec/vectors.json; then gen_proto_vectors.py turns it into src/vectors.rs):
    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install Telethon==1.45.0 kurigram==2.2.26 cryptography
    mkdir -p /tmp/vec && /tmp/refvenv/bin/python capture_proto_vectors.py
    python3 gen_proto_vectors.py

Telethon's MTProxy header code builds the obfuscated2 vectors; kurigram's real fake-TLS transport
is run against a local responder (below) that records what it sends.
"""
import asyncio, hashlib, hmac, json, os, struct, sys, time
from telethon.network.connection.tcpmtproxy import MTProxyIO
from telethon.network.connection.tcpobfuscated import ObfuscatedIO
from telethon.network.connection.tcpabridged import AbridgedPacketCodec
from telethon.network.connection.tcpintermediate import IntermediatePacketCodec, RandomizedIntermediatePacketCodec
from pyrogram.connection.proxy import normalize_proxy
from pyrogram.connection.transport.tcp import TCPIntermediatePadded
from pyrogram.crypto import faketls
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives import serialization

out = {}
SECRET = bytes.fromhex("0123456789abcdeffedcba9876543210")
PLAIN_UP = bytes(range(40))       # client -> proxy payload after the header
PLAIN_DOWN = bytes(range(100, 140))  # proxy -> client payload

def telethon_vec(name, secret_for_client, codec, dc):
    header, enc, dec = MTProxyIO.init_header(secret_for_client, dc, codec)
    out[name] = dict(secret=SECRET.hex(), dc=dc, tag=codec.obfuscate_tag.hex(), header=bytes(header).hex(),
                     up_plain=PLAIN_UP.hex(), up_wire=enc.encrypt(PLAIN_UP).hex(),
                     down_plain=PLAIN_DOWN.hex(), down_wire=dec.encrypt(PLAIN_DOWN).hex())

telethon_vec("telethon_abridged", SECRET, AbridgedPacketCodec, 2)
telethon_vec("telethon_intermediate", SECRET, IntermediatePacketCodec, -4)
telethon_vec("telethon_padded", b"\xdd" + SECRET, RandomizedIntermediatePacketCodec, 10002)

# Secret-less obfuscated2 (a client talking to a DC directly): what the DC side must accept.
header, enc, dec = ObfuscatedIO.init_header(IntermediatePacketCodec)
out["telethon_dc"] = dict(tag=IntermediatePacketCodec.obfuscate_tag.hex(), header=bytes(header).hex(),
                          up_plain=PLAIN_UP.hex(), up_wire=enc.encrypt(PLAIN_UP).hex(),
                          down_plain=PLAIN_DOWN.hex(), down_wire=dec.encrypt(PLAIN_DOWN).hex())

# kurigram fake-TLS: run its real TCP transport against a local responder that records every byte.
TLS_SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
DOMAIN = "cdn.example.org"
captured = {}

def server_flight(client_random, session_id, cipher):
    key = X25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = (b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id + cipher + b"\x00" +
            b"\x00\x2e" + b"\x00\x33\x00\x24\x00\x1d\x00\x20" + key + b"\x00\x2b\x00\x02\x03\x04")
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    sh = b"\x16\x03\x03" + len(hs).to_bytes(2, "big") + hs
    cert = os.urandom(2600)
    flight = bytearray(sh + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03" + len(cert).to_bytes(2, "big") + cert)
    flight[11:43] = hmac.new(TLS_SECRET, client_random + bytes(flight), hashlib.sha256).digest()
    return bytes(flight)

async def handle(reader, writer):
    head = await reader.readexactly(5)
    body = await reader.readexactly(int.from_bytes(head[3:5], "big"))
    hello = head + body
    client_random = hello[11:43]
    sid_len = hello[43]
    sid = hello[44:44 + sid_len]
    p = 44 + sid_len
    n = int.from_bytes(hello[p:p + 2], "big")
    suites = hello[p + 2:p + 2 + n]
    cipher = next(suites[i:i + 2] for i in range(0, n, 2) if not (suites[i] & 0x0f == 0x0a and suites[i + 1] & 0x0f == 0x0a))
    flight = server_flight(client_random, sid, cipher)
    writer.write(flight)
    await writer.drain()
    rest = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 1.5)
            if not chunk:
                break
            rest += chunk
    except asyncio.TimeoutError:
        pass
    captured.update(hello=hello, flight=flight, after=rest)
    writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = f"tg://proxy?server=127.0.0.1&port={port}&secret=ee{TLS_SECRET.hex()}{DOMAIN.encode().hex()}"
    t = TCPIntermediatePadded(proxy=normalize_proxy(link), dc_id=2)
    await t.connect(("unused", 0))
    payload = b"\x01" + bytes(range(1, 24 + 16 * 2))  # 56 bytes, MTProto-shaped size, non-zero first byte
    await t.send(payload)
    await asyncio.sleep(2)
    await t.close()
    server.close()
    hello = captured["hello"]
    mac = hmac.new(TLS_SECRET, hello[:11] + bytes(32) + hello[43:], hashlib.sha256).digest()
    ts = struct.unpack("<I", bytes(a ^ b for a, b in zip(mac[28:], hello[39:43])))[0]
    out["kurigram_tls"] = dict(secret=TLS_SECRET.hex(), domain=DOMAIN, link=link, timestamp=ts, dc=2,
                               hello=hello.hex(), server_flight=captured["flight"].hex(),
                               after=captured["after"].hex(), payload=payload.hex())

asyncio.run(main())
json.dump(out, open("/tmp/vec/vectors.json", "w"), indent=1)
for k, v in out.items():
    print(k, {kk: (len(vv) if isinstance(vv, str) else vv) for kk, vv in v.items()})
