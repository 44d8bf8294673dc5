"""Secure aggregation: exact sums, uniform-looking masked vectors, dropouts, refusals and encoding bounds;
and the attacks of a curious server: a sum of one or two updates, and asking a worker to unmask twice."""

import random

import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from scipy.stats import chisquare

from fed_core.federation.strategies import fedavg
from fed_core.privacy.secagg import (
    ID_BYTES,
    STAGES,
    SecAggClient,
    SecAggRefused,
    SecAggServer,
    neighbourhoods,
    run_protocol,
    secure_sum,
)
from fed_core.privacy.secagg_primitives import (
    DELTA_BOUND,
    FRAC_BITS,
    MASK_LABEL,
    MAX_COUNT,
    MAX_WORKERS,
    NONCE_BYTES,
    SELF_MASK_LABEL,
    SHARE_BYTES,
    EncodingOverflow,
    agree,
    decode,
    derive_key,
    encode,
    expand_mask,
    mask_private_key,
    new_seed,
)

SIGNIFICANCE = 1e-6  # a uniformity test falsely fails once in a million runs


def random_round(workers: int, length: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(workers, length, generator=gen) * 0.05
    counts = torch.randint(1, 6000, (workers,), generator=gen).tolist()
    return updates, counts


def fixed_point_sum(updates: torch.Tensor, counts: list[int], rows: list[int]) -> np.ndarray:
    """What the server must decode: the plain sum of the survivors' encoded vectors."""
    total = np.zeros(updates.shape[1] + 1, dtype=np.uint64)
    for k in rows:
        total += encode(updates[k], counts[k])
    return decode(total)


def assert_exact_sum(result, updates: torch.Tensor, counts: list[int], survivors: list[int]) -> None:
    assert result.survivors == survivors
    expected = fixed_point_sum(updates, counts, survivors)
    assert np.array_equal(result.weighted_sum.numpy(), expected[:-1])
    assert result.total_count == sum(counts[k] for k in survivors)


def test_masked_sum_decodes_to_exactly_the_fixed_point_sum():
    updates, counts = random_round(6, 500)
    result = secure_sum(updates, counts)
    assert_exact_sum(result, updates, counts, list(range(6)))
    # Rounding each weighted coordinate to 2^-24 moves the average by at most K * 2^-25 / total_count,
    # on top of float32 rounding of the plain FedAvg (|average| < 0.3, so under 1e-7).
    bound = 6 * 2.0 ** -(FRAC_BITS + 1) / sum(counts) + 1e-7
    plain = fedavg(updates, torch.tensor(counts))
    assert (result.average() - plain).abs().max().item() <= bound


def test_a_masked_vector_is_indistinguishable_from_uniform():
    """Pearson chi-square test of the masked vector's bytes against uniform over 0..255 (255 degrees of freedom).

    The update is all zeros except its count, the easiest input to recognise; the same test must
    reject the unmasked encoding, so it has the power to notice a bad mask.
    """
    updates = torch.zeros(3, 20_000)
    result = secure_sum(updates, [100, 100, 100])
    masked_bytes = np.frombuffer(result.masked_vectors[0].tobytes(), dtype=np.uint8)
    plain_bytes = np.frombuffer(encode(updates[0], 100).tobytes(), dtype=np.uint8)
    assert chisquare(np.bincount(masked_bytes, minlength=256)).pvalue > SIGNIFICANCE
    assert chisquare(np.bincount(plain_bytes, minlength=256)).pvalue < SIGNIFICANCE
    assert result.server_view(0).abs().mean().item() > 1e9  # what the server decodes is noise, not zeros


@pytest.mark.parametrize("dropped", [{0}, {6}, {1, 4}, {0, 3, 6}])
def test_dropout_of_up_to_n_minus_t_workers_gives_the_survivors_exact_sum(dropped):
    updates, counts = random_round(7, 300, seed=1)
    result = secure_sum(updates, counts, dropped, threshold=4)
    assert_exact_sum(result, updates, counts, [k for k in range(7) if k not in dropped])
    assert result.dropped == sorted(dropped)


def test_sparse_groups_are_symmetric_and_survive_any_dropout_that_leaves_t_in_every_group():
    groups = neighbourhoods(30, 9)
    assert all(len(g) == 9 and w in g for w, g in enumerate(groups))
    assert all(w in groups[v] for w, g in enumerate(groups) for v in g)
    assert groups != [list(range(30))] * 30
    updates, counts = random_round(30, 200, seed=2)
    dropped = set(random.sample(range(30), 4))  # 9 - 4 >= t = 5 in every group, whatever the graph
    result = secure_sum(updates, counts, dropped, threshold=5, group_size=9)
    assert_exact_sum(result, updates, counts, [k for k in range(30) if k not in dropped])


def test_a_round_below_the_threshold_is_refused():
    updates, counts = random_round(7, 50)
    with pytest.raises(SecAggRefused, match=r"only 3 of 7 workers .* threshold t=4 .* no sum is released"):
        secure_sum(updates, counts, {0, 1, 2, 3}, threshold=4)


def test_a_sparse_group_below_the_threshold_is_refused():
    updates, counts = random_round(30, 50)
    server = SecAggServer(30, 51, group_size=9, threshold=5)
    clients = [SecAggClient(w, updates[w], counts[w]) for w in range(30)]
    dropped = set([v for v in server.groups[0] if v != 0][:5])  # worker 0 keeps 4 of its 9 share holders
    with pytest.raises(SecAggRefused, match="worker 0's self-mask seed has 4 surviving share holders"):
        run_protocol(server, clients, dropped)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sum_of_one_or_two_updates_is_refused_before_any_key_is_drawn(workers):
    """One worker's "sum" is its update; from a sum of two, each worker reads the other's."""
    updates, counts = random_round(workers, 20)
    with pytest.raises(SecAggRefused, match=f"at least 3 reporting workers and this round has {workers} sampled"):
        secure_sum(updates, counts)


def test_a_round_left_with_two_survivors_is_refused_whatever_the_threshold():
    updates, counts = random_round(5, 20)
    with pytest.raises(SecAggRefused, match="at least 3 reporting workers and this round has 2 left of 5"):
        secure_sum(updates, counts, {0, 1, 2}, threshold=2)
    assert secure_sum(updates, counts, {0, 1}, threshold=3).survivors == [2, 3, 4]


def setup_round(workers: int, length: int = 10) -> tuple[SecAggServer, list[SecAggClient], torch.Tensor, list[int]]:
    """A round through the masked-input stage, nobody dropped: the server holds every masked vector."""
    updates, counts = random_round(workers, length)
    server = SecAggServer(workers, length + 1, group_size=workers, threshold=workers // 2 + 1)
    clients = [SecAggClient(w, updates[w], counts[w]) for w in range(workers)]
    peer_keys = server.forward_public_keys({c.worker: c.advertise_keys() for c in clients})
    inboxes = server.forward_shares({c.worker: c.share_keys(peer_keys[c.worker], server.threshold) for c in clients})
    server.collect_masked_inputs({c.worker: c.masked_input(inboxes[c.worker]) for c in clients})
    return server, clients, updates, counts


def stateless_unmask(client: SecAggClient, survived: set[int], dropped: set[int]) -> dict[int, bytes]:
    """The control: the old SecAggClient.unmask, which answered every request, however many."""
    return {v: client.held_shares[v][0 if v in survived else 1] for v in sorted(survived | dropped)}


def unmask_victim(server: SecAggServer, seed_shares: list[bytes], key_shares: list[bytes], victim: int) -> np.ndarray:
    """The victim's update, from its masked vector minus its self mask and its pairwise masks: float64 [P]."""
    t, length = server.threshold, server.length
    vector = server.masked[victim] - expand_mask(derive_key(combine_shares(seed_shares[:t]), SELF_MASK_LABEL), length)
    mask_key = mask_private_key(combine_shares(key_shares[:t]))
    for peer in server.groups[victim]:
        if peer != victim:
            mask = expand_mask(agree(mask_key, server.mask_public[peer], MASK_LABEL), length)
            vector = vector - mask if victim < peer else vector + mask
    return decode(vector)[:-1]


def ask_twice(server: SecAggServer, clients: list[SecAggClient], victim: int, unmask) -> np.ndarray:
    """The attack: ask every worker the honest question ("everybody survived"), then again "the victim dropped".

    The first answers hold shares of the victim's self-mask seed, the second of its mask key: with both, the
    server strips every mask off the victim's vector although nobody dropped.
    """
    first = {u: unmask(clients[u], *request) for u, request in server.unmask_requests().items()}
    survived = server.survivors - {victim}
    second = {u: unmask(clients[u], survived, {victim}) for u in survived}
    seed_shares = [reply[victim] for reply in first.values()]
    key_shares = [reply[victim] for reply in second.values()]
    return unmask_victim(server, seed_shares, key_shares, victim)


def test_a_server_that_asks_twice_reads_a_single_update_only_from_the_old_stateless_worker():
    server, clients, updates, counts = setup_round(5)
    victim = 3
    recovered = ask_twice(server, clients, victim, stateless_unmask) / counts[victim]
    assert np.abs(recovered - updates[victim].double().numpy()).max() < 1e-6  # the control: the attack works
    server, clients, updates, counts = setup_round(5)
    with pytest.raises(SecAggRefused, match="already answered this round's unmask request"):
        ask_twice(server, clients, victim, SecAggClient.unmask)


def test_split_questions_never_give_the_server_both_secrets_of_a_worker():
    """Told "v survived" by some workers and "v dropped" by the others: with a majority threshold, one side is short."""
    _, clients, _, _ = setup_round(5)  # threshold 3 of 5
    victim, everyone = 4, {0, 1, 2, 3, 4}
    seed_shares = [clients[u].unmask(everyone, set())[victim] for u in (0, 1, 4)]
    key_shares = [clients[u].unmask(everyone - {victim}, {victim})[victim] for u in (2, 3)]
    assert combine_shares(seed_shares) == clients[victim].self_mask_seed
    try:  # two shares of a threshold of three: an unrelated value, if any
        recovered = combine_shares(key_shares)
    except ValueError:
        recovered = None
    assert recovered != clients[victim].mask_key_seed


def test_a_worker_refuses_to_unmask_when_told_too_few_survived_or_both_of_a_peer():
    _, clients, _, _ = setup_round(5)
    with pytest.raises(SecAggRefused, match="below the threshold t=3"):
        clients[0].unmask({0, 1}, {2, 3, 4})  # "all but one of us dropped": send me their mask keys
    with pytest.raises(SecAggRefused, match="both survived and dropped"):
        clients[1].unmask({0, 1, 2, 3}, {3, 4})
    with pytest.raises(SecAggRefused, match="holds no shares of \\[7\\]"):
        clients[2].unmask({0, 1, 2, 3, 4}, {7})


@pytest.mark.parametrize("workers", [3, 4])
def test_masks_are_not_reproducible_from_torch_or_numpy_seeds(workers):
    updates, counts = random_round(workers, 100)

    def seeded_run():
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        return secure_sum(updates, counts)

    first, second = seeded_run(), seeded_run()
    assert torch.equal(first.weighted_sum, second.weighted_sum)
    for k in range(workers):
        assert not np.array_equal(first.masked_vectors[k], second.masked_vectors[k])


def test_encoding_refuses_what_could_wrap_and_the_worst_case_cannot_wrap():
    with pytest.raises(EncodingOverflow, match="clip updates first"):
        encode(torch.tensor([0.0, DELTA_BOUND * 1.01]), 10)
    with pytest.raises(EncodingOverflow, match="NaN or infinite"):
        encode(torch.tensor([float("nan")]), 10)
    for count in (0, MAX_COUNT + 1):
        with pytest.raises(EncodingOverflow, match="example count"):
            encode(torch.zeros(3), count)
    with pytest.raises(EncodingOverflow, match="workers fit the ring"):
        secure_sum(torch.zeros(MAX_WORKERS + 1, 1), [1] * (MAX_WORKERS + 1))
    # By construction: the largest encodable coordinate, summed over the most workers, stays below 2^63.
    extreme = torch.tensor([DELTA_BOUND, -DELTA_BOUND])
    largest = np.abs(encode(extreme, MAX_COUNT).view(np.int64)).max()
    assert MAX_WORKERS * int(largest) < 2**63
    result = secure_sum(torch.stack([extreme] * 3), [MAX_COUNT] * 3)
    assert result.weighted_sum.tolist() == [3 * MAX_COUNT * DELTA_BOUND, -3 * MAX_COUNT * DELTA_BOUND]


def test_any_threshold_shares_recover_a_248_bit_seed_and_fewer_do_not():
    seed = new_seed()
    assert len(seed) * 8 == 248  # the self mask's ChaCha20 key and the X25519 mask key are derived from it
    assert SHARE_BYTES == 4 + 2 * 16  # two blocks once padded: no more Shamir work than a 128-bit seed
    shares = create_shares(seed, 4, 7)
    assert all(len(share) == SHARE_BYTES for share in shares)
    assert combine_shares([shares[i] for i in (0, 2, 4, 6)]) == seed
    assert combine_shares([shares[i] for i in (1, 3, 5, 6)]) == seed
    try:  # three points give an unrelated value: almost always not even a padded 31-byte seed
        recovered = combine_shares(shares[:3])
    except ValueError:
        recovered = None
    assert recovered != seed


def test_bytes_and_seconds_are_counted_per_stage():
    workers, length = 5, 40
    updates, counts = random_round(workers, length)
    result = secure_sum(updates, counts, {2}, threshold=3)
    assert set(result.seconds_per_stage) == set(STAGES)
    sent = result.bytes_sent
    assert sent["advertise_keys"].up == workers * 64
    share_message = ID_BYTES + NONCE_BYTES + 2 * SHARE_BYTES + 16  # id, nonce, two shares, Poly1305 tag
    assert sent["share_keys"].up == sent["share_keys"].down == workers * (workers - 1) * share_message
    assert sent["masked_input"].up == (workers - 1) * (length + 1) * 8
    assert sent["unmask"].up == (workers - 1) * workers * (ID_BYTES + SHARE_BYTES)
