"""Slow and hostile clients against a small sync app pool, with one well-behaved client.

For DURATION seconds, against HOST:PORT:
  - 50 clients upload a 64 KiB body to POST /upload at 1 KiB/s,
  - 50 clients GET /big (1 MiB) and read it at 4 KiB/s,
  - 50 clients send their request head one header line every 3 s,
while one well-behaved client sends, one after another, a fast GET / and a POST /upload
with a 64 KiB body (each on a new connection, 5 s timeout). Prints one JSON line with the
well-behaved client's successes, failures, p50 and p99 in milliseconds.

    slow_clients.py HOST PORT DURATION LABEL
"""

import asyncio
import json
import sys
import time

HOST, PORT, DURATION, LABEL = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
BODY = b"b" * 65536
END = time.monotonic() + DURATION


async def open_conn():
    return await asyncio.wait_for(asyncio.open_connection(HOST, PORT), 5)


async def trickle_upload():
    while time.monotonic() < END:
        try:
            r, w = await open_conn()
            w.write(
                b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 65536\r\n\r\n"
            )
            for _ in range(64):
                if time.monotonic() >= END:
                    break
                w.write(b"t" * 1024)
                await w.drain()
                await asyncio.sleep(1)
            w.close()
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.5)


async def slow_reader():
    while time.monotonic() < END:
        try:
            r, w = await open_conn()
            w.write(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
            await w.drain()
            while time.monotonic() < END:
                data = await asyncio.wait_for(r.read(4096), 10)
                if not data:
                    break
                await asyncio.sleep(1)
            w.close()
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.5)


async def slow_headers():
    while time.monotonic() < END:
        try:
            r, w = await open_conn()
            w.write(b"GET / HTTP/1.1\r\n")
            n = 0
            while time.monotonic() < END:
                w.write(b"X-Slow-%d: x\r\n" % n)
                await w.drain()
                n += 1
                await asyncio.sleep(3)
            w.close()
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.5)


async def one_request(head, body=b""):
    start = time.monotonic()
    r, w = await open_conn()
    try:
        w.write(head + body)
        await w.drain()
        status = await asyncio.wait_for(r.readline(), 5)
        length = None
        while True:
            line = await asyncio.wait_for(r.readline(), 5)
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await asyncio.wait_for(r.readexactly(length), 5)
        ok = status.split(b" ")[1:2] == [b"200"]
        return ok, (time.monotonic() - start) * 1000
    finally:
        w.close()


async def good_client(stats):
    get = b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    post = (
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n"
        b"Content-Length: 65536\r\n\r\n"
    )
    i = 0
    while time.monotonic() < END:
        head, body = (get, b"") if i % 2 == 0 else (post, BODY)
        i += 1
        try:
            ok, ms = await asyncio.wait_for(one_request(head, body), 5)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            ok, ms = False, 5000.0
        if ok:
            stats["ok"].append(ms)
        else:
            stats["failed"] += 1
        await asyncio.sleep(0.02)


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p))], 1)


async def main():
    stats = {"ok": [], "failed": 0}
    tasks = [asyncio.create_task(good_client(stats))]
    for _ in range(50):
        tasks += [
            asyncio.create_task(trickle_upload()),
            asyncio.create_task(slow_reader()),
            asyncio.create_task(slow_headers()),
        ]
    # the attackers stop at END; give each a moment to close, then cut them off
    await asyncio.wait(tasks, timeout=DURATION + 15)
    for t in tasks:
        t.cancel()
    print(
        json.dumps(
            {
                "target": LABEL,
                "ok": len(stats["ok"]),
                "failed": stats["failed"],
                "p50_ms": pct(stats["ok"], 0.5),
                "p99_ms": pct(stats["ok"], 0.99),
            }
        ),
        flush=True,
    )


asyncio.run(main())
