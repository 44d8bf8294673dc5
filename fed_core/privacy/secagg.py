"""Secure aggregation of the workers' updates: the server holds only masked vectors and learns only their sum.

The protocol of Bonawitz et al. 2017 (Practical Secure Aggregation for Privacy-Preserving Machine
Learning), with the sparse groups of SecAgg+ (Bell et al. 2020) so that 100 workers stay cheap. Each
worker u has a *group*: itself and its neighbours. Up to about ten workers everybody is in one group
(plain SecAgg); beyond, groups of ~3 log2(n) workers on a random circulant graph (what SecAgg+ and
Flower's SecAggPlusWorkflow use). Encoding, masks, keys and Shamir shares are in secagg_primitives.py.

One round, in four stages (names as in the paper):

1. ``advertise_keys``: u draws two X25519 key pairs, one to encrypt shares for its peers (channel key)
   and one to agree pairwise masks (mask key), and sends both public keys. The server forwards to
   each worker its group's keys. Two pairs, because a dropped worker's mask key is revealed later.
2. ``share_keys``: u draws a self-mask seed b_u, splits b_u and its private mask key into Shamir
   shares, one per group member, any ``threshold`` of which recover the secret, and sends each
   peer its two shares encrypted for that peer through the server.
3. ``masked_input``: u sends y_u = x_u + PRG(b_u) + sum_{v in group, v > u} PRG(s_uv)
   - sum_{v in group, v < u} PRG(s_uv) mod 2^64, s_uv the key u and v agree. Pairwise masks cancel
   between two workers who both send; any single y_u is uniformly random. Workers whose y never
   arrives have dropped out after masking.
4. ``unmask``: the server tells each survivor who in its group survived and who dropped. For every
   group member the survivor returns its share of b (survived) or of the mask key (dropped), never
   both: both would unmask that worker. The server reconstructs them, subtracts the survivors' self
   masks and the dropped workers' pairwise masks with their surviving neighbours, and decodes the
   sum. If any needed secret has fewer than ``threshold`` surviving share holders, the round is
   refused with :class:`SecAggRefused` before any share is revealed: never a wrong sum.

**A sum of fewer than three updates is refused** (``MIN_SURVIVORS``), before any key is drawn and
again after dropouts: the "sum" of one worker is its update, and of two, each worker learns the
other's by subtracting its own. The default threshold is at least 3 for the same reason.

**Each worker answers the unmask stage once per round** and names each peer's share of one kind
only (:meth:`SecAggClient.unmask`): a server that asked "v survived" and then "v dropped" would get
both of v's secrets from every worker and read v's update. With the threshold a majority of the
group (the default), a server that tells some workers "v survived" and others "v dropped" cannot
collect ``threshold`` shares of both either, as Bonawitz et al. argue. Threat model: an
honest-but-curious server and workers; the paper's extra round of signatures, which makes the
server's survivor list the same for everyone against a server that lies actively, is left out. In
this simulation every worker and the server run in one process and talk only through the messages
below; ``bytes_sent`` counts those messages per stage.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

from fed_core.privacy.secagg_primitives import (
    FRAC_BITS,
    KEY_BYTES,
    MASK_LABEL,
    MAX_WORKERS,
    MIN_SURVIVORS,
    SELF_MASK_LABEL,
    SHARE_BYTES,
    SHARE_CHANNEL_LABEL,
    EncodingOverflow,
    agree,
    decode,
    derive_key,
    encode,
    expand_mask,
    mask_private_key,
    new_seed,
    public_bytes,
    seal,
    unseal,
)

STAGES = ("encode", "advertise_keys", "share_keys", "masked_input", "unmask")
ID_BYTES = 4  # a worker id on the wire


class SecAggRefused(RuntimeError):
    """Too few workers survived to remove the masks: the round releases no sum."""


@dataclass
class Traffic:
    up: int = 0  # bytes workers sent to the server
    down: int = 0  # bytes the server sent to workers


def default_group_size(num_workers: int) -> int:
    """Everyone in one group while 2*ceil(1.5*log2 n) + 1 would cover them all, that size beyond (21 at n = 100)."""
    sparse = 2 * math.ceil(1.5 * math.log2(max(num_workers, 2))) + 1
    return min(sparse, num_workers)


def default_threshold(group_size: int) -> int:
    """A majority of the group, and never below the ``MIN_SURVIVORS`` whose sum may be released."""
    return max(group_size // 2 + 1, min(MIN_SURVIVORS, group_size))


def too_few_workers(workers: int, when: str) -> str | None:
    """Why a sum of ``workers`` updates must not be released, or None if it may be."""
    if workers >= MIN_SURVIVORS:
        return None
    return (
        f"secure aggregation needs at least {MIN_SURVIVORS} reporting workers and this round has {workers} {when}: "
        "the sum of one update is that update, and of two, each worker would read the other's by subtracting its "
        "own. The round is refused and no sum is released."
    )


def neighbourhoods(num_workers: int, group_size: int) -> list[list[int]]:
    """Each worker's group (itself included, sorted): a circulant graph on an order drawn from the OS.

    Worker at position i of the random order groups with positions i - g//2 .. i + g//2, so the
    relation is symmetric and every group has ``group_size`` members.
    """
    if group_size >= num_workers:
        return [list(range(num_workers)) for _ in range(num_workers)]
    order = list(range(num_workers))
    secrets.SystemRandom().shuffle(order)
    position = {worker: i for i, worker in enumerate(order)}
    half = group_size // 2
    return [
        sorted(order[(position[w] + offset) % num_workers] for offset in range(-half, half + 1))
        for w in range(num_workers)
    ]


def message_bytes(message: dict[int, bytes]) -> int:
    """Size on the wire of a message addressed by worker id: each id plus its payload."""
    return sum(ID_BYTES + len(payload) for payload in message.values())


class SecAggClient:
    """One worker: it knows its own update and only what the server forwards to it."""

    def __init__(self, worker: int, delta: torch.Tensor, count: int, noise: np.ndarray | None = None) -> None:
        self.worker = worker
        self.encoded = encode(delta, count)
        if noise is not None:  # distributed DP: the worker's integer noise share, added in the ring before masking
            self.encoded[:-1] += noise.astype(np.int64).view(np.uint64)
        self.group: list[int] = []
        self.peer_keys: dict[int, bytes] = {}  # peer -> channel public key + mask public key
        self.channels: dict[int, bytes] = {}  # peer -> key that encrypts the shares between us
        self.held_shares: dict[int, tuple[bytes, bytes]] = {}  # owner -> (share of its b, share of its mask key)
        self.threshold = MIN_SURVIVORS
        self.answered = False  # the unmask stage is answered once per round, whatever the server asks after

    def advertise_keys(self) -> bytes:
        self.channel_key = X25519PrivateKey.generate()
        self.mask_key_seed = new_seed()
        self.mask_key = mask_private_key(self.mask_key_seed)
        return public_bytes(self.channel_key) + public_bytes(self.mask_key)

    def share_keys(self, peer_keys: dict[int, bytes], threshold: int) -> dict[int, bytes]:
        """Encrypted shares of the self-mask seed and of the mask key, one message per peer."""
        self.peer_keys = peer_keys
        self.threshold = threshold
        self.channels = {
            peer: agree(self.channel_key, keys[:KEY_BYTES], SHARE_CHANNEL_LABEL) for peer, keys in peer_keys.items()
        }
        self.group = sorted([*peer_keys, self.worker])
        self.self_mask_seed = new_seed()
        seed_shares = create_shares(self.self_mask_seed, threshold, len(self.group))
        key_shares = create_shares(self.mask_key_seed, threshold, len(self.group))
        mine = self.group.index(self.worker)
        self.held_shares[self.worker] = (seed_shares[mine], key_shares[mine])
        return {
            peer: seal(self.channels[peer], seed_share + key_share, self.worker, peer)
            for peer, seed_share, key_share in zip(self.group, seed_shares, key_shares)
            if peer != self.worker
        }

    def masked_input(self, inbox: dict[int, bytes]) -> bytes:
        """Keep the shares peers sent, then send the update under the self mask and the pairwise masks."""
        for peer, message in inbox.items():
            shares = unseal(self.channels[peer], message, peer, self.worker)
            self.held_shares[peer] = (shares[:SHARE_BYTES], shares[SHARE_BYTES:])
        masked = self.encoded + expand_mask(derive_key(self.self_mask_seed, SELF_MASK_LABEL), len(self.encoded))
        for peer in self.group:
            if peer != self.worker:
                mask = expand_mask(agree(self.mask_key, self.peer_keys[peer][KEY_BYTES:], MASK_LABEL), len(masked))
                if self.worker < peer:
                    masked += mask
                else:
                    masked -= mask
        return masked.tobytes()

    def unmask(self, survived: set[int], dropped: set[int]) -> dict[int, bytes]:
        """For each group member named: the share of its seed if it survived, of its mask key if it dropped.

        Answered once per round: a second request, whatever it says, is refused, so no peer's two shares
        ever both leave this worker. Also refused: a peer named both ways or outside the group, and fewer
        survivors than the threshold or than ``MIN_SURVIVORS`` (their sum would reveal single updates).
        """
        if self.answered:
            raise SecAggRefused(f"worker {self.worker} already answered this round's unmask request; it answers once.")
        self.answered = True
        if survived & dropped:
            raise SecAggRefused(
                f"worker {self.worker} was told {sorted(survived & dropped)} both survived and dropped."
            )
        strangers = (survived | dropped) - set(self.held_shares)
        if strangers:
            raise SecAggRefused(f"worker {self.worker} holds no shares of {sorted(strangers)}: not in its group.")
        if self.worker not in survived or len(survived) < self.threshold:
            raise SecAggRefused(
                f"worker {self.worker} was told {len(survived)} of its group survived, below the threshold "
                f"t={self.threshold}; it reveals no share."
            )
        too_few = too_few_workers(len(survived), "left")
        if too_few:
            raise SecAggRefused(too_few)
        return {v: self.held_shares[v][0 if v in survived else 1] for v in sorted(survived | dropped)}


class SecAggServer:
    """The aggregator: it forwards keys and encrypted shares, holds masked vectors, and learns their sum."""

    def __init__(self, num_workers: int, length: int, group_size: int, threshold: int) -> None:
        if group_size < num_workers and group_size % 2 == 0:
            raise ValueError(f"a group smaller than the round must have an odd size, got {group_size}.")
        if not 1 <= threshold <= min(group_size, num_workers):
            raise ValueError(f"threshold must be in 1..{min(group_size, num_workers)}, got {threshold}.")
        too_few = too_few_workers(num_workers, "sampled")
        if too_few:
            raise SecAggRefused(too_few)
        self.num_workers = num_workers
        self.length = length
        self.threshold = threshold
        self.groups = neighbourhoods(num_workers, group_size)
        self.traffic = {stage: Traffic() for stage in STAGES}
        self.mask_public: dict[int, bytes] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.survivors: set[int] = set()
        self.dropped: set[int] = set()

    def forward_public_keys(self, adverts: dict[int, bytes]) -> dict[int, dict[int, bytes]]:
        """Each worker's public keys go to the members of its group."""
        self.mask_public = {w: advert[KEY_BYTES:] for w, advert in adverts.items()}
        forwarded = {u: {v: adverts[v] for v in self.groups[u] if v != u} for u in adverts}
        self._count("advertise_keys", sum(map(len, adverts.values())), sum(map(message_bytes, forwarded.values())))
        return forwarded

    def forward_shares(self, outboxes: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Route the encrypted shares: inbox[v][u] is what u sent v."""
        inboxes: dict[int, dict[int, bytes]] = {v: {} for v in outboxes}
        for sender, outbox in outboxes.items():
            for receiver, message in outbox.items():
                inboxes[receiver][sender] = message
        self._count("share_keys", sum(map(message_bytes, outboxes.values())), sum(map(message_bytes, inboxes.values())))
        return inboxes

    def collect_masked_inputs(self, inputs: dict[int, bytes]) -> None:
        """Keep the masked vectors that arrived (whoever sent none dropped); refuse if masks cannot be removed."""
        self.masked = {u: np.frombuffer(vector, dtype="<u8") for u, vector in inputs.items()}
        self.survivors = set(self.masked)
        self.dropped = set(range(self.num_workers)) - self.survivors
        self._count("masked_input", sum(map(len, inputs.values())), 0)
        self._refuse_if_unrecoverable()

    def unmask_requests(self) -> dict[int, tuple[set[int], set[int]]]:
        """Tell each survivor which members of its group survived and which dropped."""
        requests = {u: (self.survivors & set(g), self.dropped & set(g)) for u, g in enumerate(self.groups)}
        requests = {u: request for u, request in requests.items() if u in self.survivors}
        self._count("unmask", 0, sum(ID_BYTES * (len(s) + len(d)) for s, d in requests.values()))
        return requests

    def unmask(self, replies: dict[int, dict[int, bytes]]) -> np.ndarray:
        """The sum of the survivors' encoded updates: their masked vectors minus every mask left in them."""
        self._count("unmask", sum(map(message_bytes, replies.values())), 0)
        shares: dict[int, list[bytes]] = {}
        for reply in replies.values():
            for owner, share in reply.items():
                shares.setdefault(owner, []).append(share)  # Flower's shares carry their own index
        total = np.zeros(self.length, dtype=np.uint64)
        for vector in self.masked.values():
            total += vector
        for owner, owner_shares in shares.items():
            seed = combine_shares(owner_shares[: self.threshold])
            if owner in self.survivors:
                total -= expand_mask(derive_key(seed, SELF_MASK_LABEL), self.length)
            else:
                total -= self._pairwise_masks_of_dropped(owner, mask_private_key(seed))
        return total

    def _pairwise_masks_of_dropped(self, dropped: int, mask_key: X25519PrivateKey) -> np.ndarray:
        """What the dropped worker's surviving neighbours added to their vectors for it."""
        masks = np.zeros(self.length, dtype=np.uint64)
        for u in self.survivors.intersection(self.groups[dropped]):
            mask = expand_mask(agree(mask_key, self.mask_public[u], MASK_LABEL), self.length)
            if u < dropped:
                masks += mask
            else:
                masks -= mask
        return masks

    def _refuse_if_unrecoverable(self) -> None:
        t = self.threshold
        too_few = too_few_workers(len(self.survivors), f"left of {self.num_workers} after dropouts")
        if too_few:
            raise SecAggRefused(too_few)
        if len(self.survivors) < t:
            raise SecAggRefused(
                f"only {len(self.survivors)} of {self.num_workers} workers sent their masked update; secure "
                f"aggregation needs at least the threshold t={t} to remove the masks, so the round is refused and "
                "no sum is released."
            )
        dropped_neighbours = {v for u in self.survivors for v in self.groups[u] if v in self.dropped}
        for owner in sorted(self.survivors | dropped_neighbours):
            holders = len(self.survivors.intersection(self.groups[owner]))
            if holders < t:
                secret = "self-mask seed" if owner in self.survivors else "pairwise mask key"
                raise SecAggRefused(
                    f"worker {owner}'s {secret} has {holders} surviving share holders in its group of "
                    f"{len(self.groups[owner])}, below the threshold t={t}; the round is refused and no sum is "
                    "released."
                )

    def _count(self, stage: str, up: int, down: int) -> None:
        self.traffic[stage].up += up
        self.traffic[stage].down += down


@dataclass
class SecureAggregate:
    weighted_sum: torch.Tensor  # float64 [P]: sum over survivors of count * delta, as decoded from the ring
    total_count: int  # the survivors' examples
    survivors: list[int]
    dropped: list[int]
    masked_vectors: dict[int, np.ndarray]  # survivor -> uint64 [P + 1]: what the server received
    bytes_sent: dict[str, Traffic]
    seconds_per_stage: dict[str, float]

    def average(self) -> torch.Tensor:
        """The FedAvg update of the survivors, float32 like the plain aggregate."""
        return (self.weighted_sum / self.total_count).float()

    def server_view(self, worker: int) -> torch.Tensor:
        """Worker's masked vector decoded as the server would if it tried: float32 [P] of noise."""
        return torch.from_numpy(decode(self.masked_vectors[worker])[:-1]).float()

    def bytes_per_worker(self) -> Traffic:
        """Traffic of every stage, averaged over the round's workers."""
        workers = len(self.survivors) + len(self.dropped)
        return Traffic(
            sum(t.up for t in self.bytes_sent.values()) // workers,
            sum(t.down for t in self.bytes_sent.values()) // workers,
        )


def secure_sum(
    updates: torch.Tensor,
    counts: Sequence[int],
    dropped_after_masking: Collection[int] = (),
    threshold: int | None = None,
    group_size: int | None = None,
    noise: Callable[[int], np.ndarray] | None = None,
) -> SecureAggregate:
    """Aggregate updates [K, P] weighted by counts, with the workers in ``dropped_after_masking`` lost.

    Row k of ``updates`` is worker k's delta. ``group_size`` defaults to :func:`default_group_size`,
    ``threshold`` to a majority of the group. ``noise``, given the round's threshold, returns a
    worker's integer noise share [P] in ring units (distributed_dp.py); each worker adds its own.
    Raises :class:`EncodingOverflow` for updates outside the encoding's bounds and :class:`SecAggRefused`
    when fewer than ``MIN_SURVIVORS`` workers take part or too few survive.
    """
    num_workers, length = updates.shape
    if num_workers > MAX_WORKERS:
        raise EncodingOverflow(f"at most {MAX_WORKERS} workers fit the ring without wrapping, got {num_workers}.")
    if not set(dropped_after_masking) <= set(range(num_workers)):
        raise ValueError(
            f"dropped workers must be rows of updates (0..{num_workers - 1}), got {dropped_after_masking}."
        )
    if len(counts) != num_workers:
        raise ValueError(f"one example count per update row: {num_workers} rows, {len(counts)} counts.")
    group_size = min(default_group_size(num_workers) if group_size is None else group_size, num_workers)
    threshold = default_threshold(group_size) if threshold is None else threshold
    server = SecAggServer(num_workers, length + 1, group_size, threshold)
    seconds: dict[str, float] = {}
    with _timed(seconds, "encode"):
        clients = [
            SecAggClient(w, updates[w], counts[w], None if noise is None else noise(threshold))
            for w in range(num_workers)
        ]
    return run_protocol(server, clients, set(dropped_after_masking), seconds)


def run_protocol(
    server: SecAggServer, clients: list[SecAggClient], dropped: set[int], seconds: dict[str, float] | None = None
) -> SecureAggregate:
    """The four stages between the server and the clients; ``dropped`` workers never deliver their masked vector.

    ``seconds`` collects each stage's time (and may already hold the clients' ``encode`` time).
    """
    seconds = {} if seconds is None else seconds
    with _timed(seconds, "advertise_keys"):
        peer_keys = server.forward_public_keys({c.worker: c.advertise_keys() for c in clients})
    with _timed(seconds, "share_keys"):
        inboxes = server.forward_shares(
            {c.worker: c.share_keys(peer_keys[c.worker], server.threshold) for c in clients}
        )
    with _timed(seconds, "masked_input"):
        server.collect_masked_inputs(
            {c.worker: c.masked_input(inboxes[c.worker]) for c in clients if c.worker not in dropped}
        )
    with _timed(seconds, "unmask"):
        requests = server.unmask_requests()
        ring_sum = server.unmask({u: clients[u].unmask(*request) for u, request in requests.items()})
        weighted_sum = torch.from_numpy(decode(ring_sum)[:-1])
        total_count = int(ring_sum.view(np.int64)[-1]) >> FRAC_BITS
    return SecureAggregate(
        weighted_sum,
        total_count,
        sorted(server.survivors),
        sorted(server.dropped),
        server.masked,
        server.traffic,
        seconds,
    )


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - start
