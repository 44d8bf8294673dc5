"""TCP links between MPC processes that count what crosses them: payload bytes and rounds.

A round is counted where a process waits for an answer to what it sent: when it starts
receiving on a link after sending on it, or when it swaps data with the other party in
one simultaneous exchange. TCP/IP headers are not counted, every payload byte is.

Tensors travel as their raw int64 bytes; the receiver always knows the shape (from the
public architecture, a batch size sent first, or because an exchange is symmetric).
"""

from __future__ import annotations

import selectors
import socket

import numpy as np
import torch

LOOPBACK = "127.0.0.1"
_SEND_CHUNK = 1 << 20


def listener() -> socket.socket:
    """A TCP socket listening on a free loopback port."""
    server = socket.create_server((LOOPBACK, 0))
    server.listen()
    return server


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous tensor's memory."""
    return memoryview(tensor.numpy().reshape(-1).view(np.uint8))


class Link:
    """One end of a TCP connection, with counters of what crossed it from this end."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.sent = 0  # payload bytes
        self.received = 0
        self.rounds = 0
        self._awaiting_answer = False  # something was sent since the last receive

    @classmethod
    def connect(cls, address: tuple[str, int]) -> Link:
        return cls(socket.create_connection(address))

    @classmethod
    def accept(cls, server: socket.socket) -> Link:
        return cls(server.accept()[0])

    def send(self, data: bytes | memoryview) -> None:
        self.sock.sendall(data)
        self.sent += len(data)
        self._awaiting_answer = True

    def receive_into(self, buffer: memoryview) -> None:
        self._count_round()
        done = 0
        while done < len(buffer):
            done += self._recv_some(buffer[done:])
        self.received += len(buffer)

    def send_tensor(self, tensor: torch.Tensor) -> None:
        self.send(raw_bytes(tensor.contiguous()))

    def receive_tensor(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        out = torch.empty(tuple(shape), dtype=torch.int64)
        self.receive_into(raw_bytes(out))
        return out

    def send_int(self, value: int) -> None:
        self.send_tensor(torch.tensor([value]))

    def receive_int(self) -> int:
        return int(self.receive_tensor((1,)))

    def exchange(self, tensor: torch.Tensor) -> torch.Tensor:
        """Send ``tensor`` and receive the other end's tensor of the same shape, both at once.

        Sending everything before receiving would deadlock once both socket buffers fill.
        """
        outgoing = raw_bytes(tensor.contiguous())
        incoming_tensor = torch.empty_like(tensor)
        incoming = raw_bytes(incoming_tensor)
        self._awaiting_answer = True
        self._count_round()
        sent = received = 0
        self.sock.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while received < len(incoming):
                if sent == len(outgoing):
                    selector.modify(self.sock, selectors.EVENT_READ)
                for _, events in selector.select():
                    if events & selectors.EVENT_WRITE and sent < len(outgoing):
                        sent += self._send_some(outgoing[sent : sent + _SEND_CHUNK])
                    if events & selectors.EVENT_READ:
                        received += self._recv_some(incoming[received:])
            self.sock.setblocking(True)
            if sent < len(outgoing):
                self.sock.sendall(outgoing[sent:])
        self.sent += len(outgoing)
        self.received += len(incoming)
        return incoming_tensor

    def close(self) -> None:
        self.sock.close()

    def _count_round(self) -> None:
        if self._awaiting_answer:
            self.rounds += 1
            self._awaiting_answer = False

    def _send_some(self, data: memoryview) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    def _recv_some(self, buffer: memoryview) -> int:
        try:
            count = self.sock.recv_into(buffer)
        except BlockingIOError:
            return 0
        if not count:
            raise ConnectionError("The other MPC process closed the connection.")
        return count
