"""Reading JSONL files line by line, with bounded memory: the same reader checks an upload and
feeds the worker, so both agree on line numbers (1-based, blank lines counted, CRLF accepted)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from orgs.jsonapi import strict_loads

BOM = b"\xef\xbb\xbf"


class LineError(Exception):
    """A defect of one line of a file; `line` is 1-based."""

    def __init__(self, line: int, message: str, *, code: str = "invalid_line") -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Line:
    number: int
    value: dict[str, Any]


def parse_object(raw: bytes, number: int) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError(number, "is not valid UTF-8") from None
    try:
        value = strict_loads(text)
    except ValueError as exc:
        raise LineError(number, f"is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise LineError(number, f"must be a JSON object, not {type(value).__name__}")
    if "\\u0000" in text:  # the database cannot store NUL in JSON; no request needs one
        raise LineError(number, "must not contain NUL characters (\\u0000)")
    return value


def iter_lines(stream: IO[bytes], *, max_line_bytes: int) -> Iterator[Line]:
    """Every non-empty line of `stream` as a parsed JSON object; LineError on the first bad one.

    A line never costs more than `max_line_bytes` of memory: a longer one is refused."""
    number = 0
    while True:
        raw = stream.readline(max_line_bytes + 2)  # room for "\r\n"
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        raw = raw.rstrip(b"\r\n")
        if len(raw) > max_line_bytes:  # also a cut-off read of a longer line
            raise LineError(number, f"is longer than {max_line_bytes} bytes")
        if not raw.strip():
            continue
        yield Line(number, parse_object(raw, number))
