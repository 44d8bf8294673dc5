"""A stranger who knows a Ray cluster's GCS address: joins as a driver and runs a shell command.

Run as ``python tests/ray_intruder.py <gcs address> <marker file>``, with none of the cluster's secrets in
its environment. The command it runs creates the marker file, so the test knows whether it got in. It prints
``JOINED`` once connected and ``RAN`` once the command ran; Ray itself logs each refused attempt.
"""

import subprocess
import sys

import ray


def main(address: str, marker: str) -> None:
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    print("JOINED", flush=True)

    @ray.remote(num_cpus=0)
    def command() -> str:
        return subprocess.run(["sh", "-c", f"id > {marker}"], capture_output=True, text=True).stdout

    ray.get(command.remote(), timeout=60)
    print("RAN", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
