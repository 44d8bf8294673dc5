"""TCP links between MPC processes that count what crosses them: payload bytes and rounds.

A round is counted where a process waits for an answer to what it sent: when it starts
receiving on a link after sending on it, or when it swaps data with the other party in
one simultaneous exchange. TCP/IP headers are not counted, every payload byte is.

Tensors travel as their raw int64 bytes; the receiver always knows the shape (from the
public architecture, a batch size sent first, or because an exchange is symmetric).

Every link starts with a mutual handshake under a key that only its two ends hold
(:class:`LinkKey`): a loopback port is open to any local process, and whoever connects
first must not be taken for a party. The connecting end sends a fresh nonce, the accepting
end answers with its own fresh nonce and an HMAC-SHA256 over the link's name, its side and
both nonces, and the connecting end replies with its HMAC over the same. A tag names the
side that made it, so one end's tag cannot be reflected back as the other's, and it covers
the other end's fresh nonce, so a recorded handshake fails when replayed. The accepting end
closes a connection that fails and waits for the next one. The handshake's bytes are not
counted: they are not part of the protocol's traffic.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import selectors
import socket
import time
from dataclasses import dataclass

import numpy as np
import torch

LOOPBACK = "127.0.0.1"
_SEND_CHUNK = 1 << 20
KEY_BYTES = 32
NONCE_BYTES = 32
TAG_BYTES = hashlib.sha256().digest_size
HANDSHAKE_SECONDS = 5.0  # a connection that stays silent this long is dropped: it holds up the real one
ACCEPT_SECONDS = 120.0  # the real end has connected long before this, whatever impostors came first


class HandshakeError(ConnectionError):
    """The other end of a link did not prove it holds the link's key."""


@dataclass(frozen=True, repr=False)
class LinkKey:
    """The key of one link, known only to the launcher and the link's two ends; ``repr`` hides it."""

    name: str  # the link, e.g. "owner-party 0": a tag for one link is no good on another
    secret: bytes

    @classmethod
    def new(cls, name: str) -> LinkKey:
        return cls(name, secrets.token_bytes(KEY_BYTES))

    def tag(self, side: bytes, connector_nonce: bytes, acceptor_nonce: bytes) -> bytes:
        message = b"|".join((self.name.encode(), side, connector_nonce, acceptor_nonce))
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"LinkKey({self.name!r})"


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise HandshakeError("The other end closed the connection during the handshake.")
        data += chunk
    return bytes(data)


def _check_tag(expected: bytes, received: bytes) -> None:
    if not hmac.compare_digest(expected, received):
        raise HandshakeError("The other end does not hold this link's key.")


def authenticate_connector(sock: socket.socket, key: LinkKey) -> None:
    """The connecting end's handshake: send a nonce, check the acceptor's tag, send ours."""
    connector_nonce = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(connector_nonce)
    reply = _receive_exactly(sock, NONCE_BYTES + TAG_BYTES)
    acceptor_nonce, acceptor_tag = reply[:NONCE_BYTES], reply[NONCE_BYTES:]
    _check_tag(key.tag(b"acceptor", connector_nonce, acceptor_nonce), acceptor_tag)
    sock.sendall(key.tag(b"connector", connector_nonce, acceptor_nonce))


def authenticate_acceptor(sock: socket.socket, key: LinkKey) -> None:
    """The accepting end's handshake: answer the connector's nonce with ours and a tag, check its tag."""
    connector_nonce = _receive_exactly(sock, NONCE_BYTES)
    acceptor_nonce = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(acceptor_nonce + key.tag(b"acceptor", connector_nonce, acceptor_nonce))
    _check_tag(key.tag(b"connector", connector_nonce, acceptor_nonce), _receive_exactly(sock, TAG_BYTES))


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
    def connect(cls, address: tuple[str, int], key: LinkKey) -> Link:
        """Connect and prove we hold ``key``; refuse an acceptor that does not."""
        sock = socket.create_connection(address, timeout=ACCEPT_SECONDS)  # it may be busy refusing impostors
        try:
            authenticate_connector(sock, key)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return cls(sock)

    @classmethod
    def accept(cls, server: socket.socket, key: LinkKey, patience: float = ACCEPT_SECONDS) -> Link:
        """The first connection on ``server`` that proves it holds ``key``; every other one is closed.

        Raises TimeoutError if none has within ``patience`` seconds.
        """
        deadline = time.monotonic() + patience
        while True:
            server.settimeout(max(deadline - time.monotonic(), 1e-3))
            sock = server.accept()[0]
            sock.settimeout(HANDSHAKE_SECONDS)
            try:
                authenticate_acceptor(sock, key)
            except OSError:  # a wrong tag, a silent or vanished peer: refused
                sock.close()
                continue
            sock.settimeout(None)
            return cls(sock)

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
