"""The MQTT transport's batched socket calls (ingest/iot_mqtt.py _BatchedIo): paho's small reads are
served from one buffer with the bytes in order, and the acknowledgements waiting together go out in
one packet of the same bytes; anything else waiting is left to paho as it is. Through a real broker:
tests/test_ingest_iot_batch.py (every measure once, in order, with the inbox bound)."""

from __future__ import annotations

import collections
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityos.ingest.iot_mqtt import PUBACK, _BatchedIo


class FakePaho:
    """paho's private members _BatchedIo wraps: a socket read of what `chunks` hold, then no data."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.reads: list[int] = []
        self.written: list[list[dict[str, Any]]] = []
        self._out_packet: collections.deque[dict[str, Any]] = collections.deque()

    def _sock_recv(self, size: int) -> bytes:
        self.reads.append(size)
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)

    def _packet_write(self) -> int:
        self.written.append(list(self._out_packet))
        self._out_packet.clear()
        return 0


def ack(mid: int, **more: Any) -> dict[str, Any]:
    packet = bytes([PUBACK, 2]) + mid.to_bytes(2, "big")
    return {"command": PUBACK, "mid": mid, "qos": 1, "pos": 0, "to_process": 4, "packet": packet, "info": None, **more}


def test_reads_are_served_in_order_from_one_socket_read() -> None:
    paho = FakePaho([b"\x30\x05hello\x30\x03abc", b"\x30"])
    batched = _BatchedIo.install(paho)
    assert batched is not None
    pieces = [paho._sock_recv(n) for n in (1, 1, 5, 1, 1)]
    assert pieces == [b"\x30", b"\x05", b"hello", b"\x30", b"\x03"]
    assert batched.buffered()
    assert paho._sock_recv(10) == b"abc"  # a short read: what is left, as a socket gives it
    assert not batched.buffered()
    assert paho._sock_recv(1) == b"\x30"  # the next socket read, fitting whole
    with pytest.raises(BlockingIOError):  # nothing more: as paho's own read says it
        paho._sock_recv(1)
    assert paho.reads == [_BatchedIo.READ] * 3


def test_waiting_acknowledgements_go_out_as_one_packet_of_the_same_bytes() -> None:
    paho = FakePaho([])
    _BatchedIo.install(paho)
    paho._out_packet.extend(ack(mid) for mid in (1, 2, 300))
    paho._packet_write()
    [sent] = paho.written
    assert len(sent) == 1 and sent[0]["command"] == PUBACK and sent[0]["pos"] == 0
    assert sent[0]["packet"] == b"".join(ack(mid)["packet"] for mid in (1, 2, 300))
    assert sent[0]["to_process"] == 12


def test_anything_else_waiting_is_left_as_it_is() -> None:
    paho = FakePaho([])
    _BatchedIo.install(paho)
    started = ack(1, pos=2, to_process=2)  # half sent already
    subscribe = {**ack(2), "command": 0x82}
    for waiting in ([started, ack(2)], [ack(1), subscribe], [ack(1)]):
        paho._out_packet.extend(waiting)
        paho._packet_write()
        assert paho.written[-1] == waiting


def test_the_installed_paho_has_what_it_wraps() -> None:
    """A paho release without these private members would leave the transport unbatched: this says so."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    assert _BatchedIo.install(client) is not None
