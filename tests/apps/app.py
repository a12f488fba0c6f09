"""A small app for the tests and benchmarks that put usher in front of real Python servers.

`wsgi` runs under gunicorn, `asgi` under uvicorn. Every answer names the server that gave it
(APP_NAME, set by the harness), so a test can tell which pool member served a request.

    GET  /healthz   200 "ok"
    POST /upload    reads the whole body, answers its length
    GET  /big       1 MiB of "x"
    GET  /ws        (uvicorn) a WebSocket that echoes every message
    anything else   200 "<APP_NAME> <path>"
"""

import os

NAME = os.environ.get("APP_NAME", "app").encode()
BIG = b"x" * (1 << 20)


def _answer(method, path, body_len):
    if path == "/healthz":
        return b"ok"
    if path == "/upload" and method == "POST":
        return str(body_len).encode()
    if path == "/big":
        return BIG
    return NAME + b" " + path.encode()


def wsgi(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    out = _answer(environ["REQUEST_METHOD"], environ["PATH_INFO"], len(body))
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))],
    )
    return [out]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                await send({"type": "websocket.send", "text": msg["text"]})
            else:
                await send({"type": "websocket.send", "bytes": msg.get("bytes") or b""})
    body_len = 0
    while True:
        msg = await receive()
        body_len += len(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    out = _answer(scope["method"], scope["path"], body_len)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})
