"""A real WebSocket client (the `websockets` library) for the tests: connects to URL through
usher, sends three messages (text and binary), checks each echo, and prints "echoed 3".

    ws_echo_client.py URL [CA_FILE SERVER_NAME]
"""

import ssl
import sys

from websockets.sync.client import connect

url = sys.argv[1]
kwargs = {"open_timeout": 10, "close_timeout": 5}
if len(sys.argv) > 2:
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    kwargs["ssl"] = ctx
    kwargs["server_hostname"] = sys.argv[3]
with connect(url, **kwargs) as ws:
    n = 0
    for msg in ["hello", b"\x00\x01binary", "x" * 70000]:
        ws.send(msg)
        got = ws.recv(timeout=10)
        assert got == msg, f"echo differs for message {n}"
        n += 1
print(f"echoed {n}")
