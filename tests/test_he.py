import numpy as np
import pytest
import tenseal as ts
import torch
import torch.nn.functional as F

from fed_core.data.mnist import load_mnist, normalize
from fed_core.encrypted.he import HeScheme
from fed_core.he.ckks import (
    BATCH_PARAMS,
    DEFAULT_GEOMETRY,
    DIGIT_PARAMS,
    HeClient,
    HeParams,
    HeServer,
    LayerShape,
    conv_diagonals,
    fc1_diagonals,
    fc2_diagonals,
    giant_groups,
    hidden_slots,
    layer_shapes,
    logit_slots,
    pack_image,
    rotation_steps,
    unit_j,
)
from fed_core.models import CryptoCNN

SLOTS = DIGIT_PARAMS.slots
# HomomorphicEncryption.org security standard (2018), table 1: largest total coefficient
# modulus (bits, special prime included) for 128-bit classical security, ternary secrets.
MAX_MODULUS_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


@pytest.fixture(scope="module")
def client():
    return HeClient()


@pytest.fixture(scope="module")
def server(trained_model, client):
    return HeServer(trained_model, client.public_context)


@pytest.fixture(scope="module")
def test_images():
    return normalize(load_mnist().test_images[:8])


def rotate(vector: np.ndarray, step: int) -> np.ndarray:
    """What a CKKS rotation by `step` does to the slots."""
    return np.roll(vector, -step)


def run_linear(x: np.ndarray, diagonals: list[np.ndarray], shape: LayerShape) -> np.ndarray:
    """HeServer._linear in plaintext: baby steps on x, giant steps (Horner) on products, then folds."""
    groups = giant_groups(diagonals, shape)
    rotated = [rotate(x, b * shape.step) for b in range(shape.baby)]
    result = None
    for row in reversed(groups):
        inner = sum(r * d for r, d in zip(rotated, row))
        result = inner if result is None else inner + rotate(result, shape.giant_step)
    for fold in shape.folds:
        result = result + rotate(result, fold)
    return result


@pytest.mark.parametrize("params", [DIGIT_PARAMS, BATCH_PARAMS], ids=["digit", "batch"])
def test_parameters_meet_128_bit_security(params):
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=params.coeff_mod_bit_sizes
    )
    primes = context.seal_context().data.key_context_data().parms().coeff_modulus()  # special prime included
    total_bits = sum(q.bit_count() for q in primes)
    assert total_bits == sum(params.coeff_mod_bit_sizes)
    assert total_bits <= MAX_MODULUS_BITS_128[params.poly_modulus_degree]


def test_scale_plan_gives_the_primes():
    plan = HeParams(input_bits=20, weight_bits=(10, 11, 12), rescale_bits=(25, None, 26, None, None), headroom_bits=5)
    # conv 30 -> 25 drops 5; square 50; fc1 61 -> 26 drops 35; square 52; fc2 64 stays
    assert plan.scale_plan() == [(30, 5), (50, None), (61, 35), (52, None), (64, None)]
    assert plan.coeff_mod_bit_sizes == [64 + 5, 35, 5, 60]


def test_rotation_keys_are_powers_of_two():
    assert rotation_steps(DEFAULT_GEOMETRY, SLOTS) == [1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048]


def test_conv_diagonals_compute_the_convolution_repeated_with_period_512():
    image = np.random.default_rng(0).normal(size=(28, 28))
    weight = np.random.default_rng(1).normal(size=(8, 1, 7, 7))
    shape = layer_shapes(DEFAULT_GEOMETRY, SLOTS)["conv"]
    result = run_linear(
        pack_image(image, DEFAULT_GEOMETRY, SLOTS),
        conv_diagonals(weight, DEFAULT_GEOMETRY, SLOTS),
        shape,
    )
    expected = F.conv2d(torch.tensor(image)[None, None], torch.tensor(weight), stride=3).flatten().numpy()
    np.testing.assert_allclose(result, np.tile(expected, SLOTS // 512), atol=1e-9)


def test_fc1_diagonals_compute_the_matvec_into_the_hidden_slots():
    rng = np.random.default_rng(2)
    matrix, x = rng.normal(size=(128, 512)), rng.normal(size=512)
    shape = layer_shapes(DEFAULT_GEOMETRY, SLOTS)["fc1"]
    result = run_linear(np.tile(x, SLOTS // 512), fc1_diagonals(matrix, SLOTS), shape)
    np.testing.assert_allclose(result[hidden_slots(DEFAULT_GEOMETRY, SLOTS)], matrix @ x, atol=1e-9)


def test_fc2_leaves_the_logits_and_nothing_else_whatever_fc1_leaves_outside_the_hidden_slots():
    rng = np.random.default_rng(3)
    matrix, h = rng.normal(size=(10, 128)), rng.normal(size=128)
    vector = rng.normal(size=SLOTS) * 100  # fc1's partial sums elsewhere
    inputs = hidden_slots(DEFAULT_GEOMETRY, SLOTS)
    vector[inputs] = h
    shape = layer_shapes(DEFAULT_GEOMETRY, SLOTS)["fc2"]
    outputs = logit_slots(DEFAULT_GEOMETRY, SLOTS)
    result = run_linear(vector, fc2_diagonals(matrix, inputs, outputs, shape, SLOTS), shape)
    np.testing.assert_allclose(result[outputs], matrix @ h, atol=1e-9)
    result[outputs] = 0
    assert not result.any()  # exactly zero in plaintext; encrypted, zero up to CKKS noise


def test_server_holds_no_secret_key_and_cannot_decrypt(server, client):
    assert client.context.has_secret_key()
    assert not server.context.has_secret_key()
    assert server.context.is_public()
    with pytest.raises(ValueError):
        server.context.secret_key()
    with pytest.raises(ValueError, match="decryption"):
        server.context.decryptor()


def test_decrypted_server_output_equals_plaintext_logits(trained_model, client, server, test_images):
    """The digit route's precision: measured max logit error ~0.005 on the pretrained model."""
    with torch.no_grad():
        expected = trained_model(test_images).double().numpy()
    for image, plain in zip(test_images, expected):
        logits = client.decrypt_logits(server.classify(client.encrypt_image(image[0].numpy())))
        np.testing.assert_allclose(logits, plain, atol=0.02)
        assert logits.argmax() == plain.argmax()


def test_the_reply_decrypts_to_the_logits_and_noise_elsewhere(trained_model, client, server, test_images):
    """The user's attack: decrypt every slot of the reply, looking for model internals.

    Folds after fc2 used to leave partial sums of weights times hidden values in 1,390 other
    slots (up to ~20 in size); now every slot but the 10 logits holds CKKS noise only (~1e-3).
    """
    logits = logit_slots(DEFAULT_GEOMETRY, SLOTS)
    others = np.setdiff1d(np.arange(SLOTS), logits)
    with torch.no_grad():
        expected = trained_model(test_images).double().numpy()
    for image, plain in zip(test_images, expected):
        slots = client.decrypt_slots(server.classify(client.encrypt_image(image[0].numpy())))
        np.testing.assert_allclose(slots.real[logits], plain, atol=0.02)
        assert np.abs(slots[others]).max() < 0.01 and np.abs(slots.imag[logits]).max() < 0.01


def test_ciphertext_is_not_the_image_and_the_public_context_is_small(client, test_images):
    encrypted = client.encrypt_image(test_images[0, 0].numpy())
    assert len(encrypted) == 1 and 100_000 < len(encrypted[0]) < 250_000  # seeded, four primes
    pixels = test_images[0, 0].numpy().astype(np.float64).tobytes()
    assert pixels[:64] not in encrypted[0]
    assert client.public_context.size < 16_000_000  # 12 rotation keys and the relinearization key


def test_j_is_an_exact_square_root_of_minus_one():
    """The batch square relies on J = X^(N/2) encoding exactly at scale 4."""
    j = unit_j(SLOTS)
    np.testing.assert_array_equal(j * j, -np.ones(SLOTS))
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[40, 40])
    encoder = ts.sealapi.CKKSEncoder(context.seal_context().data)
    for values in (j, (1 - j) / 4):
        plain = ts.sealapi.Plaintext()
        encoder.encode(values.tolist(), 4.0, plain)
        np.testing.assert_array_equal(np.array(encoder.decode_complex(plain)), values)
    a, b = np.random.default_rng(4).normal(size=(2, SLOTS))
    z = a + j * b
    np.testing.assert_allclose(j * z * z.conj() + (1 - j) / 4 * (z + z.conj()) ** 2, a**2 + j * b**2, atol=1e-12)


@pytest.fixture(scope="module")
def narrow_model():
    """A narrow CryptoCNN keeps the batch route's scalar products few, and its tests fast."""
    torch.manual_seed(0)
    return CryptoCNN(channels=2, hidden=16).eval()


def test_keys_serve_one_packing(client, narrow_model, test_images):
    batch_client = HeClient(BATCH_PARAMS)
    batch_server = HeServer(narrow_model, batch_client.public_context)
    with pytest.raises(ValueError, match="'batch' packing, not 'image'"):
        batch_client.encrypt_image(test_images[0, 0].numpy())
    with pytest.raises(ValueError, match="'batch' packing, not 'image'"):
        batch_server.classify([b""])
    with pytest.raises(ValueError, match="'image' packing, not 'batch'"):
        client.encrypt_batch(test_images[:, 0].numpy())
    with pytest.raises(ValueError, match="laid out for"):
        HeServer(narrow_model, client.public_context)


def test_batch_route_matches_plaintext_for_both_images_of_a_slot_in_two_server_processes(narrow_model):
    """Pass 1 fills the real parts of the slots and ten imaginary ones; pass 2 runs beside it."""
    mnist = load_mnist()
    count = BATCH_PARAMS.slots + 20
    images, labels = normalize(mnist.test_images[:count]), mnist.test_labels[:count]
    fractions = []
    result = HeScheme(packing="batch", workers=2).evaluate(
        narrow_model, images, labels, batch_size=count - 10, progress=fractions.append
    )
    assert result.packing == "batch" and result.communication.server_processes == 2
    assert result.communication.rounds == 2 and fractions[-1] == 1.0
    assert result.max_logit_error < 0.01
    assert result.agreement > 0.999  # a random narrow model has a few near-ties


def test_batch_route_in_this_process_reports_progress_row_by_row(narrow_model):
    mnist = load_mnist()
    images, labels = normalize(mnist.test_images[:10]), mnist.test_labels[:10]
    fractions = []
    result = HeScheme(packing="batch", workers=1).evaluate(narrow_model, images, labels, progress=fractions.append)
    assert result.communication.server_processes == 1 and "server_setup" in result.seconds
    assert len(fractions) == 128 + 16 + 10 and fractions[-1] == 1.0  # one per output row of each layer
    assert result.agreement == 1.0 and result.max_logit_error < 0.01
