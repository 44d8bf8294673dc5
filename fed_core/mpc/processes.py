"""MPC between real processes: party 0, party 1 and the dealer as OS processes over loopback TCP.

The calling process plays the model owner and the data owner: it shares the weights and
each batch of images, and reconstructs the logits. Every other role runs in its own
process and holds only what that role holds: a compute party its shares, its stream key
and what it receives; the dealer its two stream keys and the public architecture. The
processes come from multiprocessing's fork server, a clean interpreter that imported this
module but never saw the model or the images (forking the caller would copy them into every
role's memory). They run the same protocol code as the simulation
(:class:`SecureCryptoCNN`, :class:`Dealer`); only the channel and the dealer's link are
sockets here.

Links (each a TCP connection; bytes and rounds are counted on them, see :mod:`fed_core.mpc.wire`):
owner <-> party 0, owner <-> party 1, owner -> dealer (batch sizes), party 0 <-> party 1
(openings), dealer -> party 0 (its key), dealer -> party 1 (its key, then its shares of
every product). After setup and after each batch a party reports its counters to the
owner, which therefore knows the traffic on every link.

Who is at the other end of a link is checked, not assumed: the calling process draws a fresh
key per link and per evaluation (:func:`link_keys`) and hands each role only the keys of its
own links, inside the pickled arguments that the fork server passes down a pipe (never on a
command line, where ``ps`` would show them). Each link opens with a mutual HMAC handshake
under its key (:mod:`fed_core.mpc.wire`), so a local process that connects to a party's port
first is refused and the party waits for the real role. This authenticates the roles; the
protocol itself stays semi-honest: the shares carry no MACs, so a party that deviates from
the protocol could change the result undetected (or learn from a wrong answer).
"""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch

from fed_core.limits.threads import threads_for
from fed_core.models import CryptoCNN
from fed_core.mpc.model import WEIGHTS, Architecture, crypto_cnn
from fed_core.mpc.prg import KEY_BYTES, Prg
from fed_core.mpc.protocol import (
    FRAC_BITS,
    PARTIES,
    Channel,
    Dealer,
    DealerLink,
    MpcClassifier,
    SecureCryptoCNN,
    SharedTensor,
    Traffic,
    decode,
    encode,
    reconstruct,
    share,
    share_model,
)
from fed_core.mpc.ranges import check_images, check_model_range
from fed_core.mpc.wire import Link, LinkKey, listener

PARTY_FORMS = ("in-process", "processes")
IMAGE_SHAPE = (1, 28, 28)
STOP = 0  # a batch size of 0 ends a process's loop
JOIN_SECONDS = 10.0
# Every link, named by its two roles, the connecting one first.
LINKS = ("owner-party 0", "owner-party 1", "owner-dealer", "party 0-party 1", "dealer-party 0", "dealer-party 1")


def link_keys() -> dict[str, LinkKey]:
    """A fresh key for every link of one evaluation (from ``secrets``)."""
    return {name: LinkKey.new(name) for name in LINKS}


def keys_of(role: str, keys: dict[str, LinkKey]) -> dict[str, LinkKey]:
    """The keys ``role`` gets: those of its own links, so it can pass for no other role."""
    return {name: key for name, key in keys.items() if role in name.split("-")}


def _role(party: int) -> str:
    return f"party {party}"


class SocketChannel(Channel):
    """A party's end of the link to the other party: an opening is one simultaneous exchange."""

    def __init__(self, party: int, link: Link) -> None:
        self.party = party
        self.link = link

    def open(self, *masked: SharedTensor) -> list[torch.Tensor]:
        mine = [m.shares[self.party] for m in masked]
        theirs = self.link.exchange(torch.cat([t.reshape(-1) for t in mine]))
        sizes = [t.numel() for t in mine]
        return [m + t.view(m.shape) for m, t in zip(mine, theirs.split(sizes))]


class SocketDealerLink(DealerLink):
    def __init__(self, link: Link) -> None:
        self.link = link

    def send(self, share_1: torch.Tensor) -> None:
        self.link.send_tensor(share_1)

    def receive(self, shape: torch.Size) -> torch.Tensor:
        return self.link.receive_tensor(shape)


@dataclass
class Listeners:
    """One listening socket per link, made before the processes start so that none waits for another to listen.

    Every process gets a copy of each; it accepts on its own and closes all of them before it
    connects anywhere, so that a connection to a process that died is refused, not left hanging.
    """

    owner: tuple[socket.socket, socket.socket]  # accepted by party 0, party 1
    dealer: tuple[socket.socket, socket.socket]  # accepted by party 0, party 1
    peer: socket.socket  # accepted by party 1
    dealer_owner: socket.socket  # accepted by the dealer

    @classmethod
    def open(cls) -> Listeners:
        return cls((listener(), listener()), (listener(), listener()), listener(), listener())

    def close(self) -> None:
        for server in (*self.owner, *self.dealer, self.peer, self.dealer_owner):
            server.close()


def _party_counters(peer: Link, dealer: Link) -> torch.Tensor:
    return torch.tensor([peer.sent, peer.rounds, dealer.received])


def run_party(
    party: int, architecture: Architecture, frac_bits: int, listeners: Listeners, keys: dict[str, LinkKey]
) -> None:
    """A compute party's process: receive the weights' shares, then evaluate batch after batch."""
    torch.set_num_threads(threads_for("mpc"))
    role = _role(party)
    owner = Link.accept(listeners.owner[party], keys[f"owner-{role}"])
    dealer_link = Link.accept(listeners.dealer[party], keys[f"dealer-{role}"])
    if party == 1:
        peer = Link.accept(listeners.peer, keys["party 0-party 1"])
        listeners.close()
    else:
        peer_address = listeners.peer.getsockname()
        listeners.close()
        peer = Link.connect(peer_address, keys["party 0-party 1"])
    key = bytearray(KEY_BYTES)
    dealer_link.receive_into(memoryview(key))
    dealer = Dealer({party: Prg(bytes(key))}, SocketDealerLink(dealer_link))
    shared = {name: SharedTensor({party: owner.receive_tensor(shape)}) for name, shape in architecture.shapes.items()}
    network = SecureCryptoCNN(architecture, shared, dealer, SocketChannel(party, peer), frac_bits)
    owner.send_tensor(_party_counters(peer, dealer_link))
    while (n := owner.receive_int()) != STOP:
        images = SharedTensor({party: owner.receive_tensor((n, *IMAGE_SHAPE))})
        owner.send_tensor(network.forward(images).shares[party])
        owner.send_tensor(_party_counters(peer, dealer_link))
    for link in (owner, dealer_link, peer):
        link.close()


def deal_batch(dealer: Dealer, architecture: Architecture, batch_shape: torch.Size) -> None:
    """The dealer's side of one forward pass: the parties' steps, on shapes."""

    def layer(shape: torch.Size, name: str) -> torch.Size:
        return dealer.triple(name, shape, architecture.op(name))[1].shape

    crypto_cnn(batch_shape, layer, lambda shape, name: dealer.square_pair(shape)[1].shape)


def run_dealer(architecture: Architecture, listeners: Listeners, keys: dict[str, LinkKey]) -> None:
    """The dealer's process: send each party its stream key, then deal for each batch the owner announces."""
    torch.set_num_threads(threads_for("mpc"))
    party_addresses = [server.getsockname() for server in listeners.dealer]
    owner = Link.accept(listeners.dealer_owner, keys["owner-dealer"])
    listeners.close()
    to_party = [Link.connect(address, keys[f"dealer-{_role(party)}"]) for party, address in enumerate(party_addresses)]
    streams = {party: Prg() for party in PARTIES}
    for party in PARTIES:
        to_party[party].send(streams[party].key)
    dealer = Dealer(streams, SocketDealerLink(to_party[1]))
    for name in WEIGHTS:
        dealer.mask(name, architecture.shapes[name])
    while (n := owner.receive_int()) != STOP:
        deal_batch(dealer, architecture, torch.Size((n, *IMAGE_SHAPE)))
    for link in (*to_party, owner):
        link.close()


class ProcessMpcClassifier:
    """``MpcClassifier``'s interface with each role in its own process; use it as a context manager.

    Traffic is what the sockets carried, as of the last answer from the parties. As with any
    multiprocessing start method but fork, each role's process imports the calling script,
    which must therefore guard its entry point with ``if __name__ == "__main__":``.
    """

    def __init__(self, model: CryptoCNN, frac_bits: int = FRAC_BITS) -> None:
        check_model_range(model, frac_bits)
        self.frac_bits = frac_bits
        self.data_owner_prg = Prg()
        architecture = Architecture.of(model)
        listeners = Listeners.open()
        keys = link_keys()
        context = multiprocessing.get_context("forkserver")
        # The fork server imports torch once; each role is then forked from it in milliseconds.
        context.set_forkserver_preload([__name__])
        self.processes = [
            context.Process(
                target=run_party,
                args=(party, architecture, frac_bits, listeners, keys_of(_role(party), keys)),
                daemon=True,
            )
            for party in PARTIES
        ]
        self.processes.append(
            context.Process(target=run_dealer, args=(architecture, listeners, keys_of("dealer", keys)), daemon=True)
        )
        for process in self.processes:
            process.start()
        party_addresses = [server.getsockname() for server in listeners.owner]
        dealer_address = listeners.dealer_owner.getsockname()
        listeners.close()
        try:
            self.parties = [
                Link.connect(address, keys[f"owner-{_role(party)}"]) for party, address in enumerate(party_addresses)
            ]
            self.dealer = Link.connect(dealer_address, keys["owner-dealer"])
            for shared in share_model(model, Prg(), frac_bits).values():
                for party, link in enumerate(self.parties):
                    link.send_tensor(shared.shares[party])
            self._counters = [link.receive_tensor((3,)) for link in self.parties]
        except BaseException:
            self._stop_processes(0.0)
            raise

    def __enter__(self) -> ProcessMpcClassifier:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def traffic(self) -> Traffic:
        (sent_0, rounds_0, dealt_0), (sent_1, _, dealt_1) = (c.tolist() for c in self._counters)
        owner_0, owner_1 = self.parties
        links = {
            "party 0 -> party 1": sent_0,
            "party 1 -> party 0": sent_1,
            "dealer -> party 0": dealt_0,
            "dealer -> party 1": dealt_1,
            "owner -> party 0": owner_0.sent,
            "owner -> party 1": owner_1.sent,
            "owner -> dealer": self.dealer.sent,
            "party 0 -> owner": owner_0.received,
            "party 1 -> owner": owner_1.received,
        }
        return Traffic(
            sent_by_party=[sent_0 + owner_0.received, sent_1 + owner_1.received],
            rounds=rounds_0 + owner_0.rounds,
            input_bytes=owner_0.sent + owner_1.sent + self.dealer.sent,
            dealer_bytes=dealt_0 + dealt_1,
            links=links,
        )

    def share_images(self, images: torch.Tensor) -> SharedTensor:
        """The data owner's step: normalised float images [N,1,28,28] -> shares."""
        check_images(images)
        return share(encode(images, self.frac_bits), self.data_owner_prg)

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Send party i its shares; collect its shares of the logits."""
        n = x.shape[0]
        self.dealer.send_int(n)
        for party, link in enumerate(self.parties):
            link.send_int(n)
            link.send_tensor(x.shares[party])
        logits = {}
        for party, link in enumerate(self.parties):
            logits[party] = link.receive_tensor((n, 10))
            self._counters[party] = link.receive_tensor((3,))
        return SharedTensor(logits)

    def reveal(self, shared_logits: SharedTensor) -> torch.Tensor:
        return decode(reconstruct(shared_logits), self.frac_bits)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.reveal(self.forward(self.share_images(images)))

    def close(self) -> None:
        """Stop the processes and close the links."""
        for link in (*self.parties, self.dealer):
            with suppress(OSError):  # that process may be gone already
                link.send_int(STOP)
        self._stop_processes(JOIN_SECONDS)
        for link in (*self.parties, self.dealer):
            link.close()

    def _stop_processes(self, patience: float) -> None:
        for process in self.processes:
            process.join(patience)
            if process.is_alive():
                process.terminate()


@contextmanager
def mpc_classifier(model: CryptoCNN, parties: str = "in-process") -> Iterator[MpcClassifier | ProcessMpcClassifier]:
    """The MPC form named ``parties``: all roles in this process, or one process per role."""
    if parties not in PARTY_FORMS:
        raise ValueError(f"Unknown MPC parties {parties!r}; choose one of {', '.join(PARTY_FORMS)}.")
    if parties == "in-process":
        yield MpcClassifier(model)
        return
    with ProcessMpcClassifier(model) as classifier:
        yield classifier


@dataclass(frozen=True)
class Network:
    name: str
    bits_per_second: float
    rtt_seconds: float


LAN = Network("LAN, 1 Gbit/s, 0.5 ms RTT", 1e9, 0.5e-3)
WAN = Network("WAN, 100 Mbit/s, 40 ms RTT", 100e6, 40e-3)


def busiest_direction_bytes(links: dict[str, int], online_only: bool = False) -> int:
    """The most bytes any one process sends or receives: its network interface's busiest direction."""
    totals: dict[tuple[str, str], int] = {}
    for link, count in links.items():
        source, target = link.split(" -> ")
        if online_only and source == "dealer":
            continue
        totals[source, "out"] = totals.get((source, "out"), 0) + count
        totals[target, "in"] = totals.get((target, "in"), 0) + count
    return max(totals.values())


def projected_seconds(loopback_seconds: float, traffic: Traffic, network: Network, online_only: bool = False) -> float:
    """Wall time on ``network``: the loopback run plus each round's latency and the busiest direction's transfer.

    Every process sits on its own machine with its own full-duplex interface. A round costs
    one RTT (a simultaneous exchange waits about half; the owner's send-then-answer a whole
    one). ``online_only`` leaves out the dealer's traffic, which could be dealt in advance.
    """
    transfer = busiest_direction_bytes(traffic.links, online_only) * 8 / network.bits_per_second
    return loopback_seconds + traffic.rounds * network.rtt_seconds + transfer
