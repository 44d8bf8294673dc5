"""Two-party secret sharing with a dealer (:mod:`fed_core.mpc.protocol`) as an encrypted scheme."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fed_core.encrypted.base import (
    Communication,
    EncryptedDigit,
    EncryptedRun,
    Progress,
    Scheme,
    ServerView,
    Stopwatch,
)
from fed_core.limits.budget import Budget
from fed_core.mpc.processes import PARTY_FORMS, mpc_classifier
from fed_core.mpc.protocol import FRAC_BITS, MpcClassifier

MPC_BATCH = 1000
# Measured by bench/bench_encrypted.py on the 2-core development machine; it only feeds the estimate shown before
# a run, results report the measured time.
MPC_IMAGES_PER_SECOND = 4000.0


@dataclass
class MpcCommunication(Communication):
    """Bytes each compute party sent online (openings of masked values), and what was sent before or beside it."""

    parties: str  # "in-process" (every role simulated here) or "processes" (one process per role, over TCP)
    bytes_per_party: list[int]  # online, setup included
    online_bytes: int  # both parties together
    online_bytes_per_image: float  # both parties together
    setup_bytes_per_party: int  # opening the weights' masked values, once before the first batch
    rounds: int  # online rounds, setup and the final reveals included
    rounds_per_batch: int
    dealer_bytes: int  # offline: keys and correlated randomness (Beaver triples) from the dealer
    input_bytes: int  # shares of the images and weights sent by their owners
    bytes_by_link: dict[str, int]  # measured on the sockets ("processes" only)
    fixed_point_fractional_bits: int


@dataclass
class MpcServerView(ServerView):
    """What each compute party holds for one digit: one random-looking share of it, and the traffic."""

    party_0_share_glimpse: list[int]
    party_1_share_glimpse: list[int]
    bytes_per_party: list[int]  # online, setup included
    setup_bytes_per_party: int
    rounds: int
    dealer_bytes: int  # offline


@dataclass(frozen=True)
class MpcScheme(Scheme):
    """Secure multi-party computation: two parties compute on random-looking shares.

    ``parties`` is "in-process" (both parties simulated here) or "processes" (each role its own process, over
    loopback TCP: :mod:`fed_core.mpc.processes`).
    """

    name = "mpc"
    label = "Multi-party computation: two parties compute on random-looking shares"
    parties: str = "in-process"

    def __post_init__(self) -> None:
        if self.parties not in PARTY_FORMS:
            raise ValueError(f"Unknown MPC parties {self.parties!r}; choose one of {', '.join(PARTY_FORMS)}.")

    def run(self, model: nn.Module, images: torch.Tensor, batch_size: int | None, report: Progress) -> EncryptedRun:
        watch = Stopwatch()
        with mpc_classifier(model, self.parties) as classifier:
            # Opening the weights' masked values happens once, before the first batch.
            setup_rounds, setup_bytes = classifier.traffic.rounds, classifier.traffic.sent_by_party[0]
            logits, done = [], 0
            for batch in images.split(batch_size or MPC_BATCH):
                with watch("encrypt"):
                    shared = classifier.share_images(batch)
                with watch("compute"):
                    shared_logits = classifier.forward(shared)
                with watch("decrypt"):
                    logits.append(classifier.reveal(shared_logits).numpy())
                done += len(batch)
                report(done / len(images))
            traffic = classifier.traffic
        communication = MpcCommunication(
            parties=self.parties,
            bytes_per_party=traffic.sent_by_party,
            online_bytes=traffic.online_bytes,
            online_bytes_per_image=traffic.online_bytes / len(images),
            setup_bytes_per_party=setup_bytes,
            rounds=traffic.rounds,
            rounds_per_batch=(traffic.rounds - setup_rounds) // len(logits),
            dealer_bytes=traffic.dealer_bytes,
            input_bytes=traffic.input_bytes,
            bytes_by_link=traffic.links,
            fixed_point_fractional_bits=FRAC_BITS,
        )
        return EncryptedRun("shares", np.concatenate(logits), dict(watch.seconds), communication)

    def classify_encrypted(self, model: nn.Module, x: torch.Tensor, watch: Stopwatch) -> EncryptedDigit:
        with watch("server_setup"):  # share the weights, open their masked values
            classifier = MpcClassifier(model)
        setup_bytes = classifier.traffic.sent_by_party[0]
        with watch("encrypt"):
            shared = classifier.share_images(x)
        with watch("compute"):
            shared_logits = classifier.forward(shared)
        with watch("decrypt"):
            logits = classifier.reveal(shared_logits)[0]
        # The low byte of a share is as uniform as the share: a fair picture of what a party sees.
        shares = tuple((s[0, 0] & 0xFF).to(torch.uint8).numpy() for s in shared.shares.values())
        traffic = classifier.traffic
        view = MpcServerView(
            party_0_share_glimpse=[int(v) for v in shared.shares[0].flatten()[400:403]],
            party_1_share_glimpse=[int(v) for v in shared.shares[1].flatten()[400:403]],
            bytes_per_party=traffic.sent_by_party,
            setup_bytes_per_party=setup_bytes,
            rounds=traffic.rounds,
            dealer_bytes=traffic.dealer_bytes,
        )
        return EncryptedDigit(logits, view, shares)

    def estimate_seconds(self, n: int) -> float:
        return n / MPC_IMAGES_PER_SECOND

    def describe(self, n: int) -> str:
        batches = math.ceil(n / MPC_BATCH)
        return (
            f"Two parties compute on the shares of {n:,} image{'s' if n > 1 else ''} in {batches} "
            f"batch{'es' if batches > 1 else ''} of up to {MPC_BATCH:,}: secret sharing is fast, thousands of "
            "images per second."
        )

    def images_per_request(self, budget: Budget) -> int:
        return budget.mpc_images_per_request
