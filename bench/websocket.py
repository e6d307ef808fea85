"""A minimal WebSocket framer (RFC 6455) for the streams scenario's echo upstream and load client.

What it covers: the handshake's accept value, encoding a frame (masked or not, any payload length) and
decoding one from the front of a buffer (masked or not; payload unmasked). Not covered, because the bench
never sends them: fragmented messages (FIN is reported, not reassembled), extensions, UTF-8 checks.
Unmasking XORs the payload as one big integer, so a small message costs a few integer operations rather
than a Python loop over its bytes.

The proxies under test never see this code: they tunnel bytes. Only the bench's own client and upstream
frame and unframe.
"""

from __future__ import annotations

import base64
import hashlib
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
FIN = 0x80
MASKED = 0x80
SHORT_LIMIT, MEDIUM_LIMIT = 126, 1 << 16


def accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value answering ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())  # the protocol says SHA-1


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask`` (masking and unmasking are the same operation)."""
    if not payload:
        return payload
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def encode(opcode: int, payload: bytes, mask: bytes | None = None, fin: bool = True) -> bytes:
    """One frame; masked with the 4-byte ``mask`` when given (a client's frames must be)."""
    first = (FIN if fin else 0) | opcode
    flag = MASKED if mask is not None else 0
    size = len(payload)
    if size < SHORT_LIMIT:
        head = struct.pack("!BB", first, flag | size)
    elif size < MEDIUM_LIMIT:
        head = struct.pack("!BBH", first, flag | 126, size)
    else:
        head = struct.pack("!BBQ", first, flag | 127, size)
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


def decode(buffer: bytes) -> tuple[bool, int, bytes, int] | None:
    """(FIN, opcode, unmasked payload, bytes used) of the frame at the start of ``buffer``; None while
    the frame is incomplete."""
    if len(buffer) < 2:
        return None
    first, second = buffer[0], buffer[1]
    size, used = second & 0x7F, 2
    if size == 126:
        if len(buffer) < 4:
            return None
        size, used = struct.unpack_from("!H", buffer, 2)[0], 4
    elif size == 127:
        if len(buffer) < 10:
            return None
        size, used = struct.unpack_from("!Q", buffer, 2)[0], 10
    mask = b""
    if second & MASKED:
        mask, used = buffer[used:used + 4], used + 4
    end = used + size
    if len(buffer) < end:  # also when the mask is cut short: end counts its 4 bytes
        return None
    payload = buffer[used:end]
    return bool(first & FIN), first & 0x0F, apply_mask(payload, mask) if mask else payload, end
