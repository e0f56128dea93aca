"""WebSocket frames seen from the middle: an incremental header parser that never decodes payloads.

Invariants:
- `FrameReader.feed` returns the bytes that may be forwarded now, in arrival order and unchanged.
  It withholds only an incomplete frame header or an incomplete control frame (at most 14 + 125
  bytes), so every forwarded chunk ends either at a frame boundary or inside a data frame's payload.
- Data payload bytes are counted and skipped, never copied or unmasked; control frames (at most
  125 payload bytes) are read whole, so closes and pongs can be understood.
- After a violation or a close frame the reader stops: nothing behind it is returned.
- A close frame is returned only when RFC 6455 lets it on the wire (5.5.1, 7.4): no payload, or a
  code `close_code_allowed` accepts and a UTF-8 reason. Any other close is a violation of its
  sender and is never returned. Data frames are never inspected beyond their header.
- A 64-bit length with its most significant bit set (5.2) is a protocol violation, whatever the
  message size limit.
- The builders make the proxy's own control frames, masked when they go to a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

RSV1: Final = 0x40  # permessage-deflate's "compressed" bit
RSV_ALL: Final = 0x70

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005  # never on the wire: a close frame without a code
CLOSE_ABNORMAL: Final = 1006  # never on the wire: the connection dropped without a close frame
CLOSE_INVALID_DATA: Final = 1007  # e.g. text, or a close reason, that is not UTF-8
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011

_MAX_CONTROL_PAYLOAD: Final = 125
_MAX_PAYLOAD_LENGTH: Final = (1 << 63) - 1  # RFC 6455 5.2: a 64-bit length's top bit is 0

Buffer = bytes | bytearray  # what a trio stream's receive_some may return


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol or a limit; `code` is the close code it gets."""

    code: int
    reason: str


_TOP_BIT_LENGTH: Final = Violation(CLOSE_PROTOCOL_ERROR, "64-bit length with its top bit set")


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """A whole control frame: unmasked payload, and its place in the bytes `feed` returned."""

    opcode: int
    payload: bytes
    start: int
    end: int

    def close_code(self) -> int:
        if len(self.payload) < 2:
            return CLOSE_NO_STATUS
        return int.from_bytes(self.payload[:2], "big")

    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", "replace")


def close_code_allowed(code: int) -> bool:
    """Whether a close frame may carry `code` on the wire (RFC 6455 7.4 and IANA's registry).

    1000-1003 and 1007-1014 are defined (1012-1014 registered with IANA), 3000-4999 belong to
    libraries and applications. 1004 is reserved; 1005, 1006 and 1015 stand for "no close frame"
    and must never be sent; everything else below 3000 is unassigned, and 5000 up does not exist.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_violation(payload: bytes) -> Violation | None:
    """What is wrong with a close frame's (unmasked) `payload`, or None if it may be relayed."""
    if not payload:
        return None
    if len(payload) == 1:
        return Violation(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not close_code_allowed(code):
        return Violation(CLOSE_PROTOCOL_ERROR, f"close code {code} is not allowed on the wire")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return Violation(CLOSE_INVALID_DATA, "close reason is not valid UTF-8")
    return None


class FrameReader:
    """Parses the frames one peer sends, chunk by chunk.

    `masked` is what RFC 6455 demands of this peer (clients mask, servers don't). `compressed`
    allows RSV1 on the first frame of a data message (permessage-deflate was negotiated).
    `max_message_size` caps the payload bytes of one message, across its fragments.
    """

    __slots__ = (
        "_allowed_rsv",
        "_mask_bit",
        "_max_message_size",
        "_message_size",
        "_pending",
        "controls",
        "in_message",
        "messages",
        "payload_left",
        "stopped",
        "violation",
    )

    def __init__(self, *, masked: bool, compressed: bool, max_message_size: int) -> None:
        self._mask_bit = 0x80 if masked else 0
        self._allowed_rsv = RSV1 if compressed else 0
        self._max_message_size = max_message_size
        self._message_size = 0
        self._pending: Buffer = b""
        self.payload_left = 0  # bytes of the current data frame not yet seen
        self.in_message = False  # a fragmented message has started and not finished
        self.messages = 0  # data messages whose final frame has begun
        self.controls: list[ControlFrame] = []  # filled by the last feed, when any
        self.violation: Violation | None = None
        self.stopped = False

    @property
    def pending(self) -> Buffer:
        """Bytes fed but not returned yet: the start of a frame header or of a control frame."""
        return self._pending

    @property
    def at_boundary(self) -> bool:
        """Everything returned so far ends exactly where a frame ends."""
        return self.payload_left == 0

    def feed(self, data: Buffer) -> Buffer:
        """Take the next bytes from the peer; return the prefix that may be forwarded now.

        Control frames found are in `controls` (reset on every call that finds one); a
        violation stops the reader, and the bytes before the offending frame are returned.
        """
        if self.controls:
            self.controls = []
        if self.stopped:
            return b""
        buf = self._pending + data if self._pending else data
        size = len(buf)
        left = self.payload_left
        if left >= size:  # all of it is payload of the frame under way (nothing is pending)
            self.payload_left = left - size
            return buf
        pos = left  # where the next frame's header starts
        left = 0
        mask_bit = self._mask_bit
        max_size = self._max_message_size
        while pos < size:
            if size - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                header = 6 if b1 & 0x80 else 2
                if size - pos < header:
                    break
            else:
                header = (4 if length == 126 else 10) + (4 if b1 & 0x80 else 0)
                if size - pos < header:
                    break
                if length == 126:
                    length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                else:
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length > _MAX_PAYLOAD_LENGTH:
                        self.payload_left = 0
                        return self._stop(buf, pos, _TOP_BIT_LENGTH)
            end = pos + header + length
            if (
                (b0 == 0x82 or b0 == 0x81)  # a whole text or binary message, no extension bit
                and b1 & 0x80 == mask_bit
                and length <= max_size
                and not self.in_message
            ):
                self.messages += 1  # what `_check` says of it, the common case kept short
            else:
                problem = self._check(b0, b1, length)
                if problem is not None:
                    self.payload_left = 0
                    return self._stop(buf, pos, problem)
                opcode = b0 & 0x0F
                if opcode & 0x8:
                    if end > size:
                        break  # a control frame is returned whole
                    payload = bytes(buf[pos + header : end])
                    if b1 & 0x80:
                        payload = unmask(payload, bytes(buf[pos + header - 4 : pos + header]))
                    if opcode == OP_CLOSE:
                        problem = close_violation(payload)
                        if problem is not None:
                            self.payload_left = 0
                            return self._stop(buf, pos, problem)
                    self.controls.append(ControlFrame(opcode, payload, pos, end))
                    if opcode == OP_CLOSE:
                        self.payload_left = 0
                        self.stopped = True
                        self._pending = b""
                        return buf[:end] if end < size else buf
                    pos = end
                    continue
            if end > size:  # the rest of its payload comes with later reads
                left = end - size
                pos = size
                break
            pos = end
        self.payload_left = left
        if pos == size:
            self._pending = b""
            return buf
        self._pending = buf[pos:]
        return buf[:pos]

    def _check(self, b0: int, b1: int, length: int) -> Violation | None:
        opcode = b0 & 0x0F
        if b1 & 0x80 != self._mask_bit:
            problem = "unmasked frame" if self._mask_bit else "masked frame from a server"
            return Violation(CLOSE_PROTOCOL_ERROR, problem)
        if opcode & 0x8:
            if opcode > OP_PONG:
                return Violation(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
            if b0 & RSV_ALL:
                return Violation(CLOSE_PROTOCOL_ERROR, "reserved bits set on a control frame")
            if not b0 & 0x80:
                return Violation(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > _MAX_CONTROL_PAYLOAD:
                return Violation(CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes")
            return None
        if opcode > OP_BINARY:
            return Violation(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
        rsv = b0 & RSV_ALL
        if opcode == OP_CONTINUATION:
            if not self.in_message:
                return Violation(CLOSE_PROTOCOL_ERROR, "continuation frame outside a message")
            if rsv:
                return Violation(CLOSE_PROTOCOL_ERROR, "reserved bits set on a continuation frame")
            size = self._message_size + length
        else:
            if self.in_message:
                return Violation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented message")
            if rsv & ~self._allowed_rsv:
                return Violation(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
            size = length
        if size > self._max_message_size:
            return Violation(CLOSE_MESSAGE_TOO_BIG, "message too big")
        if b0 & 0x80:
            self.messages += 1
            self.in_message = False
            self._message_size = 0
        else:
            self.in_message = True
            self._message_size = size
        return None

    def _stop(self, buf: Buffer, pos: int, problem: Violation) -> Buffer:
        self.violation = problem
        self.stopped = True
        self._pending = b""
        return buf[:pos]


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte masking `key` (used for control frames only)."""
    if not payload:
        return payload
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(len(payload), "big")


def control_frame(opcode: int, payload: bytes, mask_key: bytes | None) -> bytes:
    """One final control frame; masked with `mask_key` when it goes to a server."""
    if len(payload) > _MAX_CONTROL_PAYLOAD:
        raise ValueError("control frame payload over 125 bytes")
    if mask_key is None:
        return bytes((0x80 | opcode, len(payload))) + payload
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask_key + unmask(payload, mask_key)


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's payload, with the reason cut on a character boundary to fit 123 bytes."""
    encoded = reason.encode("utf-8")[: _MAX_CONTROL_PAYLOAD - 2]
    return code.to_bytes(2, "big") + encoded.decode("utf-8", "ignore").encode("utf-8")
