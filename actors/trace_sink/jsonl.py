"""JSONL export with size rotation: ``trace.jsonl`` -> ``trace.jsonl.1`` ... ``trace.jsonl.<keep>``.

Each line is one :class:`TraceRecord`: the (already redacted) event plus where it came from (stream
sequence, W3C ``traceparent``). :func:`read_jsonl` reads the records back (for replay and tests).

Example:
    >>> # w = RotatingJsonlWriter(Path("/tmp/t/trace.jsonl"), max_bytes=1 << 20, keep=3)
    >>> # w.write([record_line(record)]); w.close()
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from schemas.trace import TraceEvent


class TraceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One stored trace line."""

    event: TraceEvent
    subject: str = ""
    stream_seq: int = 0
    traceparent: str | None = None
    received_ts: float = 0.0
    actor_spans: bool = False  # the emitting coordinator recorded the run's spans itself (``Trinity-Spans``)


_encoder = msgspec.json.Encoder()


def record_line(record: TraceRecord) -> bytes:
    """The record as one JSON line (newline-terminated)."""
    return _encoder.encode(record) + b"\n"


class RotatingJsonlWriter:
    """Appends lines to ``path``; before a line would push the file past ``max_bytes`` the file rotates.

    A single line longer than ``max_bytes`` is still written (into a fresh file), never split.
    ``keep`` rotated files are kept; ``keep=0`` discards the old file on rotation.
    """

    def __init__(self, path: Path, *, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.rotations = 0
        self.bytes_written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab")
        self._size = self._fh.tell()

    def _rotate(self) -> None:
        self._fh.close()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
            oldest.unlink(missing_ok=True)
            for i in range(self.keep - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._fh = self.path.open("ab")
        self._size = 0

    def write(self, lines: list[bytes]) -> None:
        """Append ``lines`` (each newline-terminated), rotating as needed, then flush."""
        for line in lines:
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                self._fh.flush()
                self._rotate()
            self._fh.write(line)
            self._size += len(line)
            self.bytes_written += len(line)
        self._fh.flush()

    def files(self) -> list[Path]:
        """The current file then the rotated ones, newest first (those that exist)."""
        rotated = [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.keep + 1)]
        return [p for p in [self.path, *rotated] if p.exists()]

    def close(self) -> None:
        """Flush and close the current file."""
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()


_decoder = msgspec.json.Decoder(TraceRecord)


def read_jsonl(path: Path) -> Iterator[TraceRecord]:
    """Records of one JSONL file, in order (a torn last line is skipped)."""
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return
            yield _decoder.decode(line)
