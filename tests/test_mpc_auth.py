"""MPC processes authenticate each other: a local process that connects to a party's port first is refused."""

import secrets
import socket
import threading
from pathlib import Path

import pytest

from fed_core.data.mnist import load_mnist, normalize
from fed_core.encrypted.mpc import MpcScheme
from fed_core.mpc import processes as mpc_processes
from fed_core.mpc import wire as mpc_wire
from fed_core.mpc.processes import LINKS, Listeners, keys_of, link_keys
from fed_core.mpc.wire import NONCE_BYTES, TAG_BYTES, HandshakeError, Link, LinkKey, listener


def refused(sock: socket.socket) -> bool:
    """The other end closed the connection rather than talk on (EOF or a reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def attack(sock: socket.socket, key: LinkKey | None) -> bool:
    """The connector's side of the handshake with a wrong key (or, with none, a random tag): refused?"""
    nonce = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(nonce)
    reply = mpc_wire._receive_exactly(sock, NONCE_BYTES + TAG_BYTES)
    sock.sendall(key.tag(b"connector", nonce, reply[:NONCE_BYTES]) if key else secrets.token_bytes(TAG_BYTES))
    return refused(sock)


def impostor(address: tuple[str, int], key: LinkKey | None) -> bool:
    return attack(socket.create_connection(address), key)


class Recording:
    """A socket stand-in that keeps what the connector sends: the eavesdropper's copy of a handshake."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sent = sock, []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))
        self.sock.sendall(data)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)


def accept_in_thread(server: socket.socket, key: LinkKey, patience: float = 30.0):
    result = {}

    def run():
        try:
            result["link"] = Link.accept(server, key, patience)
        except OSError as error:
            result["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_control_a_plain_accept_takes_whoever_connects_first():
    """The old behaviour: the first connection in the queue is taken for the party."""
    server = listener()
    first = socket.create_connection(server.getsockname())
    real = socket.create_connection(server.getsockname())
    taken = server.accept()[0]
    assert taken.getpeername() == first.getsockname()
    for sock in (server, first, real, taken):
        sock.close()


def test_impostors_that_connect_first_are_refused_and_the_real_end_is_taken(monkeypatch):
    monkeypatch.setattr(mpc_wire, "HANDSHAKE_SECONDS", 0.3)
    server, key = listener(), LinkKey.new("owner-party 0")
    silent = socket.create_connection(server.getsockname())  # holds the queue, says nothing
    thread, accepted = accept_in_thread(server, key)
    outcomes = [impostor(server.getsockname(), None), impostor(server.getsockname(), LinkKey.new(key.name))]
    # The right secret on another link is no good either: the link's name is in the tag.
    outcomes.append(impostor(server.getsockname(), LinkKey("owner-party 1", key.secret)))
    real = Link.connect(server.getsockname(), key)
    thread.join()
    assert outcomes == [True, True, True] and refused(silent)
    real.send_int(7)
    assert accepted["link"].receive_int() == 7
    for sock in (real, accepted["link"], server):
        sock.close()


def test_a_replayed_handshake_is_refused():
    key = LinkKey.new("party 0-party 1")
    server = listener()
    thread, accepted = accept_in_thread(server, key)
    recording = Recording(socket.create_connection(server.getsockname()))
    mpc_wire.authenticate_connector(recording, key)
    thread.join()
    assert "link" in accepted  # the recorded handshake was a real one
    nonce, tag = recording.sent
    thread, accepted = accept_in_thread(server, key, patience=2.0)
    replay = socket.create_connection(server.getsockname())
    replay.sendall(nonce)
    mpc_wire._receive_exactly(replay, NONCE_BYTES + TAG_BYTES)  # a fresh nonce: the old tag no longer fits
    replay.sendall(tag)
    assert refused(replay)
    thread.join()
    assert isinstance(accepted["error"], TimeoutError)  # nobody real came, nobody was taken
    for sock in (recording.sock, accepted.get("link"), server):
        if sock is not None:
            sock.close()


def test_a_connector_refuses_an_acceptor_without_the_key():
    server = listener()
    thread, _ = accept_in_thread(server, LinkKey.new("owner-dealer"), patience=2.0)
    with pytest.raises(HandshakeError):
        Link.connect(server.getsockname(), LinkKey.new("owner-dealer"))
    thread.join()
    server.close()


def test_each_role_gets_only_the_keys_of_its_links():
    keys = link_keys()
    assert len({key.secret for key in keys.values()}) == len(LINKS)
    assert set(keys_of("party 0", keys)) == {"owner-party 0", "party 0-party 1", "dealer-party 0"}
    assert set(keys_of("dealer", keys)) == {"owner-dealer", "dealer-party 0", "dealer-party 1"}
    assert keys["owner-dealer"].secret.hex() not in repr(keys)
    assert link_keys()["owner-dealer"].secret != keys["owner-dealer"].secret  # fresh per evaluation


def test_impostors_on_every_port_are_refused_and_the_evaluation_completes(monkeypatch, trained_model):
    """Before the roles start, a local process connects to every listening port, without a key and with a wrong one."""
    outcomes, threads = [], []
    open_listeners = Listeners.open

    def open_and_attack() -> Listeners:
        listeners = open_listeners()
        ports = {
            "owner-party 0": listeners.owner[0],
            "owner-party 1": listeners.owner[1],
            "dealer-party 0": listeners.dealer[0],
            "dealer-party 1": listeners.dealer[1],
            "party 0-party 1": listeners.peer,
            "owner-dealer": listeners.dealer_owner,
        }
        for name, server in ports.items():
            for wrong_key in (None, LinkKey.new(name)):
                sock = socket.create_connection(server.getsockname())  # now: first in the queue
                threads.append(threading.Thread(target=lambda s=sock, k=wrong_key: outcomes.append(attack(s, k))))
        for thread in threads:
            thread.start()
        return listeners

    monkeypatch.setattr(mpc_processes.Listeners, "open", staticmethod(open_and_attack))
    mnist = load_mnist()
    images, labels = normalize(mnist.test_images[:20]), mnist.test_labels[:20]
    result = MpcScheme(parties="processes").evaluate(trained_model, images, labels, batch_size=10)
    for thread in threads:
        thread.join()
    assert outcomes == [True] * 12
    assert result.agreement == 1.0


def test_keys_reach_the_roles_through_a_pipe_not_their_command_line_or_environment(monkeypatch, trained_model):
    drawn = []
    monkeypatch.setattr(mpc_processes, "link_keys", lambda: drawn.append(link_keys()) or drawn[-1])
    with mpc_processes.ProcessMpcClassifier(trained_model) as classifier:
        shown = b"".join(
            Path(f"/proc/{process.pid}/{part}").read_bytes()
            for process in classifier.processes
            for part in ("cmdline", "environ")
        )
    assert shown and drawn
    for key in drawn[0].values():
        assert key.secret not in shown and key.secret.hex().encode() not in shown
