"""Find one field of a multipart/form-data body as it streams past, without holding the body:
pure code, fed bytes in any split (RFC 7578). The switch uses it for the `model` field of an
audio upload, which clients may send before or after the file."""

from __future__ import annotations

import re

MAX_HEADERS = 16 * 1024  # bytes of one part's headers
MAX_VALUE = 4 * 1024  # bytes of the field's value

_DISPOSITION = re.compile(rb"^content-disposition:(.*)$", re.I | re.M)
_NAME = re.compile(rb'(?:^|;)\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.I)


class MalformedForm(ValueError):
    """The body is not the multipart form its Content-Type says."""


def boundary_of(content_type: str) -> bytes | None:
    """The boundary parameter of a `multipart/form-data` Content-Type, or None."""
    mime, _, params = content_type.partition(";")
    if mime.strip().lower() != "multipart/form-data":
        return None
    m = re.search(r'(?:^|;)\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', params, re.I)
    return (m.group(1) or m.group(2)).encode() if m else None


def field_name(headers: bytes) -> bytes | None:
    """The `name` of a part, from its Content-Disposition header."""
    m = _DISPOSITION.search(headers.replace(b"\r\n", b"\n"))
    n = _NAME.search(m.group(1)) if m else None
    return (n.group(1) if n.group(1) is not None else n.group(2)) if n else None


class FieldScanner:
    """`feed` bytes until `value` is set (the field was found) or `ended` (the form closed without
    it). Keeps only what it needs: a part's headers, the field's value, and a delimiter's length
    of everything else."""

    def __init__(self, boundary: bytes, name: str) -> None:
        self._delim = b"\r\n--" + boundary
        self._name = name.encode()
        self._buf = bytearray(b"\r\n")  # the first delimiter has no CRLF of its own before it
        self._state = "skip"  # skip (to the next delimiter) | after (a delimiter) | headers | value
        self.value: str | None = None
        self.ended = False

    def feed(self, data: bytes) -> str | None:
        if self.value is not None or self.ended:
            return self.value
        buf = self._buf
        buf += data
        while True:
            if self._state == "skip":
                i = buf.find(self._delim)
                if i < 0:
                    del buf[: max(0, len(buf) - len(self._delim) + 1)]
                    return None
                del buf[: i + len(self._delim)]
                self._state = "after"
            if self._state == "after":
                if len(buf) < 2:
                    return None
                if buf[:2] == b"--":
                    self.ended = True
                    return None
                end = buf.find(b"\r\n")  # transport padding (spaces, tabs) may precede the CRLF
                if end < 0:
                    if len(buf) > MAX_HEADERS:
                        raise MalformedForm("a multipart delimiter line never ends")
                    return None
                if buf[:end].strip(b" \t"):
                    raise MalformedForm("text after a multipart delimiter")
                del buf[: end + 2]
                self._state = "headers"
            if self._state == "headers":
                if buf[:2] == b"\r\n":
                    headers, cut = b"", 2  # a part without headers
                else:
                    j = buf.find(b"\r\n\r\n")
                    if j < 0:
                        if len(buf) > MAX_HEADERS:
                            raise MalformedForm("a part's headers are too long")
                        return None
                    headers, cut = bytes(buf[:j]), j + 4
                del buf[:cut]
                self._state = "value" if field_name(headers) == self._name else "skip"
            if self._state == "value":
                i = buf.find(self._delim)
                if (i if i >= 0 else len(buf) - len(self._delim)) > MAX_VALUE:
                    raise MalformedForm(f"the {self._name.decode()} field is longer than {MAX_VALUE} bytes")
                if i < 0:
                    return None
                self.value = bytes(buf[:i]).decode("utf-8", errors="replace")
                buf.clear()
                return self.value
