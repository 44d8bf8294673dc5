import json
import threading

import pytest
import torch

from fed_core.cli import main
from fed_core.data.mnist import load_mnist, normalize
from fed_core.encrypted.mpc import MpcScheme
from fed_core.models import save_model
from fed_core.mpc.processes import LAN, WAN, ProcessMpcClassifier, busiest_direction_bytes, projected_seconds
from fed_core.mpc.protocol import Traffic
from fed_core.mpc.wire import Link, LinkKey, listener

BYTES = 8
# Ring elements per image: openings (x - a for each product: conv input, two squares, fc1, fc2 inputs)
# and party 1's shares of the products (conv 512, its square 512, fc1 128, its square 128, fc2 10).
OPENED_PER_IMAGE = 784 + 512 + 512 + 128 + 128
DEALT_PER_IMAGE = 512 + 512 + 128 + 128 + 10
WEIGHTS = 8 * 49 + 128 * 512 + 10 * 128
PARAMETERS = WEIGHTS + 8 * 64 + 128 + 10


def test_exchange_swaps_large_tensors_without_deadlock_and_counts_them():
    server, key = listener(), LinkKey.new("a-b")
    links = {}
    accept = threading.Thread(target=lambda: links.setdefault("b", Link.accept(server, key)))
    accept.start()
    links["a"] = Link.connect(server.getsockname(), key)
    accept.join()
    big = {name: torch.full((2_000_000,), value) for name, value in (("a", 1), ("b", 2))}  # 16 MB each way
    received = {}
    other = threading.Thread(target=lambda: received.setdefault("b", links["b"].exchange(big["b"])))
    other.start()
    received["a"] = links["a"].exchange(big["a"])
    other.join()
    assert torch.equal(received["a"], big["b"]) and torch.equal(received["b"], big["a"])
    for link in links.values():
        assert (link.sent, link.received, link.rounds) == (16_000_000, 16_000_000, 1)
        link.close()
    server.close()


def test_processes_agree_with_plaintext_and_count_the_wire(trained_model):
    mnist = load_mnist()
    images, labels = normalize(mnist.test_images[:60]), mnist.test_labels[:60]
    result = MpcScheme(parties="processes").evaluate(trained_model, images, labels, batch_size=25)
    assert result.agreement == 1.0
    assert result.max_logit_error < 0.05
    comm = result.communication
    links = comm.bytes_by_link
    batches = 3
    assert links["party 0 -> party 1"] == links["party 1 -> party 0"] == (WEIGHTS + 60 * OPENED_PER_IMAGE) * BYTES
    assert links["dealer -> party 0"] == 32  # its stream key: party 0 draws all its shares
    assert links["dealer -> party 1"] == 32 + 60 * DEALT_PER_IMAGE * BYTES
    # The weights' shares, then per batch its size and the images' shares.
    assert links["owner -> party 0"] == (PARAMETERS + batches + 60 * 784) * BYTES
    assert links["owner -> dealer"] == batches * BYTES
    # After setup and after each batch: counters (3 numbers), and per batch the logits' shares.
    assert links["party 1 -> owner"] == ((1 + batches) * 3 + 60 * 10) * BYTES
    # Setup: the weights' opening, then the parties' report; per batch five openings and the reveal.
    assert comm.rounds == 2 + 6 * batches
    assert comm.rounds_per_batch == 6


def test_the_cli_runs_the_parties_as_processes(tmp_path, trained_model):
    model_file, out = tmp_path / "model.pt", tmp_path / "result.json"
    save_model(trained_model, model_file, "crypto_cnn")
    args = ["encrypted-eval", "--model", str(model_file), "--scheme", "mpc", "--parties", "processes", "--n", "20"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["communication"]["parties"] == "processes"
    assert result["agreement"] == 1.0


def test_a_role_that_dies_makes_an_error_not_a_hang(trained_model):
    with ProcessMpcClassifier(trained_model) as classifier:
        classifier.processes[1].kill()
        classifier.processes[1].join()
        with pytest.raises(OSError):
            classifier.logits(normalize(load_mnist().test_images[:3]))


def test_projection_adds_latency_per_round_and_the_busiest_direction():
    links = {"party 0 -> party 1": 10**6, "party 1 -> party 0": 10**6, "dealer -> party 1": 2 * 10**6}
    traffic = Traffic(rounds=10, links=links)
    assert busiest_direction_bytes(links) == 3 * 10**6  # party 1 receives from both
    assert busiest_direction_bytes(links, online_only=True) == 10**6
    assert projected_seconds(1.0, traffic, LAN) == pytest.approx(1.0 + 10 * 0.5e-3 + 24e6 / 1e9)
    assert projected_seconds(1.0, traffic, WAN, online_only=True) == pytest.approx(1.0 + 10 * 0.04 + 8e6 / 1e8)
