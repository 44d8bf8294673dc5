"""Privacy benchmark: the figures of secure aggregation, differential privacy and the gradient-inversion attack.

    python bench/bench_private.py                   # every part with its defaults (tens of minutes)
    python bench/bench_private.py secagg attack     # some parts only

Each part is also a script of its own with more options: bench/private_secagg.py (what the protocol adds to
a round at 10 and 100 workers, and its bytes), bench/private_dp.py (DP-SGD accuracy at epsilon 1, 3 and 8;
DP-FedAvg from 10 to 6,000 workers) and bench/private_attack.py (reconstruction quality and time, with and
without each defence).
"""

from __future__ import annotations

import argparse

import private_attack
import private_dp
import private_secagg

PARTS = {"secagg": private_secagg.main, "dp": private_dp.main, "attack": private_attack.main}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", choices=list(PARTS), default=list(PARTS))
    for part in parser.parse_args().parts:
        print(f"\n== {part} ({PARTS[part].__module__}.py)", flush=True)
        PARTS[part]([])


if __name__ == "__main__":
    main()
