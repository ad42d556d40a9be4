#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (run from anywhere; idempotent)."""
import base64, hashlib, os, struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "corpus")
KEY = bytes([0xA1, 0xB2, 0xC3, 0xD4])
M64 = (1 << 64) - 1


def frame(b0, payload, mask=KEY):
    out = bytearray([b0])
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        out.append(m | n)
    elif n <= 0xFFFF:
        out.append(m | 126); out += struct.pack(">H", n)
    else:
        out.append(m | 127); out += struct.pack(">Q", n)
    if mask:
        out += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(out) + payload


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


def client_nonce(seed):
    """The first 16 bytes of wsrpc_core::Xoshiro256::from_seed(seed)."""
    sm = seed
    s = []
    for _ in range(4):
        sm = (sm + 0x9E3779B97F4A7C15) & M64
        z = sm
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        s.append(z ^ (z >> 31))
    out = b""
    for _ in range(2):
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45)
        out += struct.pack("<Q", result)
    return out


def accept(key):
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


REQUEST = (b"GET /chat?token=t HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Version: 13\r\n\r\n")
CKEY = base64.b64encode(client_nonce(7))
RESPONSE = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept(CKEY) + b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n")


def script(role, *steps):
    """A wsrpc_core::fuzz::connection script: role byte, then (op, arg[, bytes]) steps."""
    out = bytearray([role])
    for step in steps:
        if isinstance(step, (bytes, bytearray)):
            for i in range(0, len(step), 255):
                chunk = step[i:i + 255]
                out += bytes([0, len(chunk)]) + chunk
        else:
            out += bytes(step)
    return bytes(out)


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


frames = {
    "text_masked": frame(0x81, b"Hello"),
    "text_unmasked": frame(0x81, b"Hello", None),
    "fragments": frame(0x01, b"Hel") + frame(0x89, b"ping") + frame(0x80, b"lo"),
    "len16": frame(0x82, bytes(300)),
    "len64": frame(0x82, bytes(70000)),
    "close": frame(0x88, b"\x03\xe8bye"),
    "rsv": frame(0xC1, b"x"),
    "bad_opcode": frame(0x83, b"x"),
}
for name, data in frames.items():
    write("frame_decoder", name, data)

write("handshake", "request", REQUEST)
write("handshake", "response", RESPONSE)
write("handshake", "plain_get", b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
write("handshake", "http10", REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"))
write("handshake", "bad_version", REQUEST.replace(b"Version: 13", b"Version: 8"))

session = frame(0x81, "κόσμε".encode()) + frame(0x89, b"p") + frame(0x01, b"a") + frame(0x80, b"b") + frame(0x88, b"\x03\xe8")
write("connection", "server_session", script(0, REQUEST, session, (6, 0)))
write("connection", "server_timers", script(0, REQUEST, (5, 255), (5, 255), (7, 0), (7, 3)))
write("connection", "server_bad_utf8", script(0, REQUEST, frame(0x81, b"\xce\xba\xed\xa0\x80")))
write("connection", "server_big", script(0, REQUEST, frame(0x82, bytes(2000)), frame(0x82, bytes(40000))))
server_frames = frame(0x81, b"hi", None) + frame(0x89, b"p", None) + frame(0x88, b"\x03\xe8", None)
write("connection", "client_session", script(1, RESPONSE, server_frames, (7, 0), (7, 2), (6, 0)))
write("connection", "client_bad_accept", script(1, RESPONSE.replace(b"Accept: ", b"Accept: x")))
print("seeds written to", os.path.normpath(ROOT))

# JSON-RPC messages.
for name, msg in {
    "single": b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}',
    "named": b'{"jsonrpc":"2.0","method":"echo","params":{"a":[1,{"b":null}]},"id":"x"}',
    "notification": b'{"jsonrpc":"2.0","method":"later","params":[3]}',
    "batch": b'[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1},{"jsonrpc":"2.0","method":"later","params":[2],"id":2},1,{"foo":"boo"}]',
    "invalid": b'{"jsonrpc":"2.0","method":1,"params":"bar"}',
    "parse_error": b'{"jsonrpc":"2.0","method":"foobar,"params":"bar","baz]',
    "subscribe": b'[{"jsonrpc":"2.0","method":"subscribe","params":["t",0],"id":1},{"jsonrpc":"2.0","method":"unsubscribe","params":["0x1"],"id":2}]',
    "builtins": b'[{"jsonrpc":"2.0","method":"rpc.health","id":1},{"jsonrpc":"2.0","method":"rpc.metrics","id":2}]',
    "ids": b'[{"jsonrpc":"2.0","method":"len","id":1e3},{"jsonrpc":"2.0","method":"len","id":"\\u00e9"},{"jsonrpc":"2.0","method":"len","id":null}]',
}.items():
    write("jsonrpc", name, msg)

# HTTP heads and bodies.
write("http", "chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n")
write("http", "length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
write("http", "get", b"GET /health?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")

# Whole server connections: HTTP requests, a WebSocket session, publishes and a shutdown.
def post(body, extra=b""):
    return (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)

rpc = b'[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1},{"jsonrpc":"2.0","method":"later","params":[2],"id":2}]'
write("engine", "http_pipeline", script(0, post(rpc) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /metrics HTTP/1.1\r\n\r\n", (5, 255), (5, 255)))
write("engine", "http_chunked", script(0, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
                                      + b"10\r\n" + rpc[:16] + b"\r\n" + format(len(rpc) - 16, "x").encode() + b"\r\n" + rpc[16:] + b"\r\n0\r\n\r\n"))
write("engine", "http_errors", script(0, b"OPTIONS / HTTP/1.1\r\nOrigin: http://localhost:1\r\nAccess-Control-Request-Private-Network: true\r\n\r\n" + post(b"{}", b"Origin: http://evil\r\n")))
ws_session = (REQUEST.replace(b"Sec-WebSocket-Protocol: chat\r\n", b"")
              + frame(0x81, b'{"jsonrpc":"2.0","method":"subscribe","params":["t"],"id":1}')
              + frame(0x81, rpc) + frame(0x89, b"p"))
write("engine", "ws_session", script(0, ws_session, (7, 0), (7, 2), (6, 2), (5, 10), (6, 1), frame(0x88, b"\x03\xe8"), (6, 0)))
write("engine", "ws_binary", script(0, REQUEST + frame(0x82, b"\x00\x01") + frame(0x88, b"\x03\xe8")))
print("more seeds written")

# permessage-deflate: compressed messages for the inflating decoder (fuzz target `inflate`).
# Settings byte: bits 0-1 limit (64, 1000, 4096, 70000), bit 2 context takeover, bit 3 text,
# bits 4-7 chop. Records: [h, payload], h & 1 ends the message, h >> 1 is the length.
import zlib


def deflate_message(data, c=None):
    c = c or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def records(compressed, piece=127):
    out = bytearray()
    chunks = [compressed[i:i + piece] for i in range(0, len(compressed), piece)] or [b""]
    for i, chunk in enumerate(chunks):
        out.append((len(chunk) << 1) | (1 if i == len(chunks) - 1 else 0))
        out += chunk
    return bytes(out)


json_msg = b'{"jsonrpc":"2.0","method":"notify","params":{"topic":"prices","seq":7,"result":[1,2,3,"abc"]}}' * 6
write("inflate", "json_text", bytes([0x0A]) + records(deflate_message(json_msg)))
write("inflate", "two_messages", bytes([0x2A]) + records(deflate_message(json_msg)) + records(deflate_message(b"hello hello hello")))
takeover = zlib.compressobj(6, zlib.DEFLATED, -15)
write("inflate", "takeover", bytes([0x0E]) + records(deflate_message(json_msg, takeover)) + records(deflate_message(json_msg, takeover)))
write("inflate", "bomb", bytes([0x12]) + records(deflate_message(b"\x00" * 200000)))
write("inflate", "just_over", bytes([0x01]) + records(deflate_message(b"a" * 1001)))
write("inflate", "bad_utf8", bytes([0x09]) + records(deflate_message("héllo".encode()[:2] + b"\xff rest")))
write("inflate", "final_block", bytes([0x08]) + records(zlib.compress(b"Hello", 9)[2:-4]))
write("inflate", "corrupt", bytes([0x00]) + records(b"\xff\xff\xff\x00\x01"))
write("inflate", "empty", bytes([0x08]) + records(b"\x00") + records(b""))
print("inflate seeds written")
