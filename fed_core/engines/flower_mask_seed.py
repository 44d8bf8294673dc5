"""Flower's SecAgg+ masks come from 32-bit seeds: how, what a server can do with that, and what the app says.

Flower 1.42 expands every mask with ``pseudo_rand_gen`` (flwr/common/secure_aggregation/secaggplus_utils.py):
it XORs the 4-byte words of the mask's secret into one 32-bit integer and draws the mask from numpy's legacy
MT19937, ``np.random.RandomState(seed32).randint(0, 2**32 - 1, shape)``. However long the secret (a
self-mask seed of 32 bytes from ``os.urandom``, a pairwise key of 44 bytes, base64 of HKDF over ECDH P-384),
a mask is one of 2^32 vectors. Its first entry is the generator's first output (the draw is rejected only
when that output is 2^32 - 1), so one known entry singles out the seed among the 2^32.

The server learns each survivor's self-mask seed in the unmask stage (that is how SecAgg+ removes self
masks), which leaves the pairwise masks on each masked vector, one per group neighbour. fed_core refuses
rounds of fewer than three (flower_secagg.py), so at least two are left; but a worker colluding with the
server knows its own, and in a round of three that leaves one. The vector's first entry is the weight
factor, a value the server knows, so trying the 2^32 seeds (:func:`find_seeds`) strips that last mask and
gives the server the worker's update. Without collusion, two masks of 32 bits each are left: a search of
2^64 as written, less with a table of first outputs.

fed_core's in-process secure aggregation (secagg_primitives.py) keys self masks with 248-bit seeds and
pairwise masks through X25519 (the curve's 128-bit security), where no such search exists.
``python -m fed_core.engines.flower_mask_seed`` measures how fast this machine searches seeds and prints the
time the whole 2^32 takes.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

SEED_SPACE = 2**32
# What the Train page shows when secure aggregation runs on the flower engine.
FLOWER_SECURE_AGGREGATION_NOTE = (
    "Flower's SecAgg+ (flwr 1.42): the server receives only masked updates and unmasks only their weighted sum, "
    "and workers that drop out mid-round are recovered from Shamir shares; but Flower draws every mask from "
    "numpy's MT19937 with a 32-bit seed, so a server that tries all 2^32 seeds (about an hour on one CPU core) "
    "and colludes with one worker of a round of three can remove the last mask and read another's update, and no "
    "mask is stronger than 32 bits, against at least 128 for the in-process engine's ChaCha20 masks (248-bit "
    "seeds for self masks, X25519 for pairwise ones)."
)

_MULTIPLIER = np.uint32(1812433253)  # MT19937's initialisation (init_genrand)
_MATRIX_A = np.uint32(0x9908B0DF)
_UPPER, _LOWER = np.uint32(0x80000000), np.uint32(0x7FFFFFFF)
_MIDDLE = 397  # MT19937's m: the first output mixes state words 0, 1 and 397


def fold_seed(secret: bytes) -> int:
    """The 32-bit seed Flower's ``pseudo_rand_gen`` draws a mask from: the XOR of the secret's 4-byte words."""
    seed = 0
    for i in range(0, len(secret), 4):
        seed ^= int.from_bytes(secret[i : i + 4], "little")
    return seed


def mask_from_seed(seed: int, num_range: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The mask ``pseudo_rand_gen`` draws from any secret that folds to ``seed``."""
    generator = np.random.RandomState(seed)
    return [generator.randint(0, num_range - 1, shape, dtype=np.int64) for shape in shapes]


def first_outputs(seeds: np.ndarray) -> np.ndarray:
    """The first 32-bit output of MT19937 seeded with each of ``seeds`` (uint32), computed for all at once."""
    with np.errstate(over="ignore"):
        state = seeds.astype(np.uint32)
        word0 = state
        for i in range(1, _MIDDLE + 1):
            state = _MULTIPLIER * (state ^ (state >> np.uint32(30))) + np.uint32(i)
            if i == 1:
                word1 = state
        mixed = (word0 & _UPPER) | (word1 & _LOWER)
        y = state ^ (mixed >> np.uint32(1)) ^ np.where(mixed & np.uint32(1), _MATRIX_A, np.uint32(0))
        y ^= y >> np.uint32(11)
        y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
        y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
        return y ^ (y >> np.uint32(18))


def find_seeds(first_entry: int, start: int = 0, stop: int = SEED_SPACE, chunk: int = 2**20) -> list[int]:
    """Every seed in [start, stop) whose mask begins with ``first_entry``.

    Over all 2^32 seeds a first entry has about one such seed (sometimes none, sometimes a few); a second
    entry of the mask tells the candidates apart.
    """
    found: list[int] = []
    for low in range(start, stop, chunk):
        seeds = np.arange(low, min(low + chunk, stop), dtype=np.uint64)
        found += seeds[first_outputs(seeds) == np.uint32(first_entry)].tolist()
    return found


def seeds_per_second(count: int = 2**20) -> float:
    """How many seeds this machine checks per second on one thread (numpy)."""
    start = time.perf_counter()
    find_seeds(0, 0, count, chunk=count)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also search all 2^32 seeds for a random mask")
    args = parser.parse_args(argv)
    rate = seeds_per_second()
    print(f"one thread checks {rate:,.0f} seeds/s (numpy, load average {os.getloadavg()[0]:.1f})")
    print(
        f"all 2^32 seeds: {SEED_SPACE / rate / 3600:.2f} hours on one thread, {SEED_SPACE / rate:,.0f} thread-seconds"
    )
    if args.full:
        seed = int.from_bytes(os.urandom(4), "little")
        target = int(mask_from_seed(seed, SEED_SPACE, [(1,)])[0][0])
        started = time.perf_counter()
        found = find_seeds(target)
        print(f"all 2^32 seeds searched in {time.perf_counter() - started:,.0f} s: {found} (the true seed: {seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
