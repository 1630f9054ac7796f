"""Metric logging: JSON lines, TensorBoard event files and a progress line.

TensorBoard's event format is written directly (length-prefixed protocol-buffer records with
masked CRC32C checksums), so no TensorFlow or tensorboard package is needed to write it.
Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time

import numpy as np


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           scalars: dict[str, float] | None = None) -> bytes:
    """An ``Event`` protocol buffer: wall_time (1, double), step (2, int64), file_version (3)
    or summary (5) holding ``Value``s of tag (1) and simple_value (2, float)."""
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5)
                         + struct.pack("<f", value))
            for tag, value in scalars.items())
        msg += _field_bytes(5, values)
    return msg


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and a TensorBoard event file."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        tb_dir = os.path.join(workdir, "tensorboard")
        os.makedirs(tb_dir, exist_ok=True)
        self._events = open(os.path.join(tb_dir, name), "ab")
        self._events.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        row = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._events.write(_record(_event(time.time(), int(step), scalars=scalars)))
        self._events.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._events.close()


def read_events(path: str) -> list[tuple[int, dict[str, float]]]:
    """Reads back (step, scalars) from an event file written here, checking every CRC."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[pos + 8:pos + 12])[0] != _masked_crc(header):
            raise ValueError(f"{path}: bad length checksum at byte {pos}")
        body = data[pos + 12:pos + 12 + length]
        if struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] != _masked_crc(body):
            raise ValueError(f"{path}: bad data checksum at byte {pos}")
        out.append(_parse_event(body))
        pos += 16 + length
    return [e for e in out if e[1]]


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        yield number, value


def _parse_event(body: bytes) -> tuple[int, dict[str, float]]:
    step, scalars = 0, {}
    for number, value in _fields(body):
        if number == 2:
            step = value
        elif number == 5:
            for _, v in _fields(value):
                fields = dict(_fields(v))
                scalars[fields[1].decode()] = struct.unpack("<f", fields[2])[0]
    return step, scalars


class Progress:
    """A one-line progress display: step, steps/s, ETA and the latest metrics.

    The rate counts from :meth:`restart` (the loop calls it once the step is compiled, so
    compilation does not dilute steps/s or the ETA)."""

    def __init__(self, total: int, start: int, *, enabled: bool = True, stream=sys.stderr):
        self.total, self.enabled, self.stream = total, enabled, stream
        self.restart(start)

    def restart(self, step: int) -> None:
        self.start, self.t0 = step, time.perf_counter()

    def rate(self, step: int) -> float:
        """Steps per second since the last restart (NaN before a step has been done)."""
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        return done / elapsed if elapsed > 0 and done > 0 else float("nan")

    def update(self, step: int, metrics: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        shown = " ".join(f"{k}={v:.4g}" for k, v in (metrics or {}).items())
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "--:--:--"
        self.stream.write(f"\rstep {step}/{self.total} | {rate:.2f} steps/s | ETA {eta_s} | {shown}")
        self.stream.flush()
        if step >= self.total:
            self.stream.write("\n")
