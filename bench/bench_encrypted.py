"""Encrypted-inference benchmarks: prints the figures quoted for MPC and HE.

    python bench/bench_encrypted.py                     # MPC (in one process and as processes) and both HE
                                                        # routes on all 10k test images
    python bench/bench_encrypted.py --digits 100        # the one-digit HE route on 100 images only
    python bench/bench_encrypted.py --he-batch-n 0      # skip the HE batch run

Every HE figure is printed beside the one measured before the current HE design (``was``).

The model is assets/pretrained_crypto_cnn.pt (or --model); without one, a CryptoCNN is
trained centrally for a few seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fed_core.data.mnist import load_mnist, normalize
from fed_core.encrypted import EvalResult
from fed_core.encrypted.base import available_cpus
from fed_core.encrypted.he import HeCommunication, HeScheme
from fed_core.encrypted.mpc import MpcCommunication, MpcScheme
from fed_core.he.ckks import DIGIT_PARAMS, HeClient, HeServer
from fed_core.models import load_model
from fed_core.mpc.processes import LAN, WAN, busiest_direction_bytes, mpc_classifier, projected_seconds
from fed_core.mpc.protocol import FRAC_BITS, Traffic
from fed_core.mpc.ranges import MAX_FAILURE_PER_IMAGE, check_model_range
from fed_core.mpc.truncation import measure_truncation

ROOT = Path(__file__).resolve().parent.parent

PRETRAINED = ROOT / "assets" / "pretrained_crypto_cnn.pt"
# README figures of the previous HE design (7 primes, 7 input ciphertexts, one image per slot).
WAS = {
    "digit_ms": 243,
    "encrypt_ms": 42,
    "compute_ms": 200,
    "decrypt_ms": 1,
    "public_mb": 18.0,
    "batch_10k_s": 183,
    "batch_images_per_s": 55,
    "batch_max_logit_error": 0.0011,
}


def load_or_train(path: Path) -> torch.nn.Module:
    if path.exists():
        return load_model(path)[0]
    print(f"{path} not found: training a CryptoCNN centrally (a few seconds)")
    from devtools.quick_model import trained_crypto_cnn

    return trained_crypto_cnn()


def median_ms(samples: list[float]) -> str:
    return f"{1000 * statistics.median(samples):.1f} ms"


def report(result: EvalResult) -> None:
    print(f"  {result.summary()}")
    print(
        f"  accuracy: plaintext {result.plain_accuracy:.2%}, encrypted {result.encrypted_accuracy:.2%} "
        f"({100 * (result.encrypted_accuracy - result.plain_accuracy):+.2f} points)"
    )
    print("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()))
    match result.communication:
        case MpcCommunication() as comm:
            print(
                f"  online traffic: {comm.online_bytes_per_image / 1e3:.1f} kB/image both parties together "
                f"({comm.online_bytes / 1e6:.0f} MB), {comm.rounds} rounds ({comm.rounds_per_batch} per "
                f"batch of 1000); dealer {comm.dealer_bytes / 1e6:.0f} MB; inputs {comm.input_bytes / 1e6:.0f} MB"
            )
        case HeCommunication() as comm:
            print(
                f"  public context {comm.public_context_bytes / 1e6:.1f} MB, upload "
                f"{comm.upload_bytes / 1e6:.0f} MB, download {comm.download_bytes / 1e6:.1f} MB, "
                f"{comm.bytes_per_image / 1e3:.0f} kB/image"
            )


def bench_mpc_single(model: torch.nn.Module, image: torch.Tensor, parties: str, repeats: int = 50) -> None:
    share, compute, reveal, total = [], [], [], []
    with mpc_classifier(model, parties) as classifier:
        setup_bytes, setup_rounds = classifier.traffic.online_bytes, classifier.traffic.rounds
        for _ in range(repeats):
            t0 = time.perf_counter()
            shared = classifier.share_images(image)
            t1 = time.perf_counter()
            shared_logits = classifier.forward(shared)
            t2 = time.perf_counter()
            classifier.reveal(shared_logits)
            t3 = time.perf_counter()
            share.append(t1 - t0), compute.append(t2 - t1), reveal.append(t3 - t2), total.append(t3 - t0)
        traffic = classifier.traffic
    per_image = (traffic.online_bytes - setup_bytes) / repeats
    print(
        f"  one image (median of {repeats}): {median_ms(total)} = share {median_ms(share)} + compute "
        f"{median_ms(compute)} + reveal {median_ms(reveal)}; {per_image / 1e3:.1f} kB online (both parties), "
        f"{(traffic.rounds - setup_rounds) / repeats:.0f} rounds (+ {setup_bytes / 1e3:.0f} kB and "
        f"{setup_rounds} rounds once, to set up)"
    )


def bench_mpc_range(model: torch.nn.Module) -> None:
    bounds = check_model_range(model, FRAC_BITS)
    failures = sum(b.failure_chance(FRAC_BITS) for b in bounds)
    print(
        "  range check, largest |value| before each truncation over every valid image: "
        + "; ".join(f"{b.step} {b.bound:.3g}" for b in bounds)
        + f" (ring limit {2.0 ** (63 - 2 * FRAC_BITS):.2g}); truncation failures per image with every value at "
        f"its bound {failures:.2g} (limit {MAX_FAILURE_PER_IMAGE})"
    )


def report_wire(result: EvalResult) -> None:
    comm = result.communication
    assert isinstance(comm, MpcCommunication)
    links = comm.bytes_by_link
    print("  on the wire: " + ", ".join(f"{link} {count / 1e6:.1f} MB" for link, count in links.items()))
    traffic = Traffic(rounds=comm.rounds, links=links)
    # The steps (share, compute, reveal) run on the network; starting the processes (chiefly a fresh
    # interpreter importing torch) does not, but sharing and masking the weights does: their bytes
    # and rounds are in the counts.
    steps = sum(v for k, v in result.seconds.items() if k != "total")
    setup = result.total_seconds - steps
    print(
        f"  {result.n:,} images in {steps:.1f} s after {setup:.1f} s of setup (starting the processes, "
        f"sharing and masking the weights); {comm.rounds} rounds"
    )
    for network in (LAN, WAN):
        print(
            f"  projected on a {network.name}: {projected_seconds(steps, traffic, network):.1f} s "
            f"({projected_seconds(steps, traffic, network, online_only=True):.1f} s with the dealer's "
            f"randomness dealt in advance) = loopback {steps:.1f} s + {comm.rounds} rounds x RTT + "
            f"{busiest_direction_bytes(links) / 1e6:.0f} MB through the busiest interface, plus setup"
        )


def bench_mpc_truncation(model: torch.nn.Module, images: torch.Tensor) -> None:
    steps = measure_truncation(model, images)
    total = steps.pop("all")
    print(
        f"  truncation: {total.elements:,} truncated elements over {len(images):,} images, {total.failures} off by "
        f"more than one unit against the exact fixed-point floor (rate {total.rate:.2g}, 95% upper bound "
        f"{total.rate_upper_95:.1g}); expected {total.expected_failures:.2g} (sum over elements of |x| / 2^64)"
    )
    print(
        "  per step, largest |value| before truncation and expected failures: "
        + "; ".join(f"{step} {s.max_abs_value:.3g}, {s.expected_failures:.1g}" for step, s in steps.items())
    )


def bench_he_single(model: torch.nn.Module, images: torch.Tensor) -> None:
    start = time.perf_counter()
    client = HeClient(DIGIT_PARAMS)
    keygen = time.perf_counter() - start
    start = time.perf_counter()
    server = HeServer(model, client.public_context)
    setup = time.perf_counter() - start
    public = client.public_context
    primes = DIGIT_PARAMS.coeff_mod_bit_sizes
    print(
        f"  N={DIGIT_PARAMS.poly_modulus_degree}, primes {primes} bits ({sum(primes)} <= 218: 128-bit security); "
        f"keygen {keygen:.2f} s; server setup {setup:.2f} s"
    )
    print(
        f"  public context {public.size / 1e6:.1f} MB (was {WAS['public_mb']} MB): TenSEAL context with relin "
        f"keys {len(public.tenseal) / 1e6:.1f} MB + rotation keys {len(public.galois_keys) / 1e6:.1f} MB; "
        f"secret context {client.secret_context_size / 1e3:.0f} kB"
    )
    with torch.no_grad():
        plain = model(images).double().numpy()
    encrypt, compute, decrypt, cpu, errors, agree = [], [], [], [], [], 0
    for image, expected in zip(images, plain):
        c0, t0 = time.process_time(), time.perf_counter()
        encrypted = client.encrypt_image(image[0].numpy())
        t1 = time.perf_counter()
        result = server.classify(encrypted)
        t2 = time.perf_counter()
        logits = client.decrypt_logits(result)
        t3 = time.perf_counter()
        encrypt.append(t1 - t0), compute.append(t2 - t1), decrypt.append(t3 - t2), cpu.append(time.process_time() - c0)
        errors.append(abs(logits - expected).max())
        agree += int(logits.argmax() == expected.argmax())
    total = [e + c + d for e, c, d in zip(encrypt, compute, decrypt)]
    print(
        f"  one digit (median of {len(images)}): {median_ms(total)} (was {WAS['digit_ms']} ms) = encrypt "
        f"{median_ms(encrypt)} (was {WAS['encrypt_ms']}) + compute {median_ms(compute)} (was {WAS['compute_ms']}) "
        f"+ decrypt {median_ms(decrypt)} (was {WAS['decrypt_ms']}); fastest {1000 * min(total):.1f} ms; "
        f"CPU time {median_ms(cpu)} (unlike wall time, hardly changed by other processes on the machine)"
    )
    print(
        f"  agreement with plaintext {agree}/{len(images)} = {agree / len(images):.2%}, max logit error "
        f"{max(errors):.2g}, median {statistics.median(errors):.2g}"
    )
    print(
        f"  ciphertexts: {len(encrypted)} in, {sum(map(len, encrypted)) / 1e3:.0f} kB (seeded; was 7 x 223 kB); "
        f"1 out, {len(result) / 1e3:.0f} kB (was 94 kB)"
    )


def report_he_batch(result: EvalResult) -> None:
    report(result)
    print(
        f"  was: 10k images in {WAS['batch_10k_s']} s ({WAS['batch_images_per_s']} images/s), max logit error "
        f"{WAS['batch_max_logit_error']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=PRETRAINED)
    parser.add_argument("--he-batch-n", type=int, default=10_000, help="test images for the HE batch run (0: skip)")
    parser.add_argument("--digits", type=int, default=10_000, help="test images for the one-digit HE route (0: skip)")
    args = parser.parse_args()

    model = load_or_train(args.model)
    mnist = load_mnist()
    images, labels = normalize(mnist.test_images), mnist.test_labels
    print(f"torch threads: {torch.get_num_threads()}; fixed point: {FRAC_BITS} fractional bits")

    print("MPC, full test set, every party simulated in this process:")
    report(MpcScheme().evaluate(model, images, labels))
    bench_mpc_single(model, images[:1], "in-process")
    bench_mpc_truncation(model, images)
    bench_mpc_range(model)

    print("MPC, full test set, party 0, party 1 and the dealer as processes over loopback TCP:")
    result = MpcScheme(parties="processes").evaluate(model, images, labels)
    report(result)
    report_wire(result)
    bench_mpc_single(model, images[:1], "processes")

    if args.digits:
        print("HE, one digit at a time:")
        bench_he_single(model, images[: args.digits])

    n = args.he_batch_n
    for workers in sorted({1, available_cpus()}) if n else []:
        print(f"HE, {n} images packed two per slot, {workers} server process{'es' if workers > 1 else ''}:")
        cpu = time.process_time()
        report_he_batch(HeScheme(packing="batch", workers=workers).evaluate(model, images[:n], labels[:n]))
        print(f"  CPU time of this process: {time.process_time() - cpu:.1f} s")


if __name__ == "__main__":
    main()
