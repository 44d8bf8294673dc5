import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fed_core.data import load_mnist, normalize
from fed_core.he import (
    DEFAULT_GEOMETRY,
    HeClient,
    HeServer,
    bsgs_diagonals,
    conv_weight_vectors,
    fold_steps,
    pack_image,
)
from fed_core.models import CryptoCNN

SLOTS = 4096


@pytest.fixture(scope="module")
def client():
    return HeClient()


@pytest.fixture(scope="module")
def server(trained_model, client):
    return HeServer(trained_model, client.public_context)


@pytest.fixture(scope="module")
def test_images():
    return normalize(load_mnist().test_images[:3])


def rotate(vector: np.ndarray, step: int) -> np.ndarray:
    """What a CKKS rotation by `step` does to the slots."""
    return np.roll(vector, -step)


def fold(vector: np.ndarray, period: int, block: int) -> np.ndarray:
    for step in fold_steps(period, block):
        vector = vector + rotate(vector, step)
    return vector


def test_conv_packing_computes_the_convolution_in_plaintext():
    image = np.random.default_rng(0).normal(size=(28, 28))
    weight = np.random.default_rng(1).normal(size=(8, 1, 7, 7))
    products = sum(
        x * w
        for x, w in zip(
            pack_image(image, DEFAULT_GEOMETRY, SLOTS),
            conv_weight_vectors(weight, DEFAULT_GEOMETRY, SLOTS),
        )
    )
    result = fold(products, SLOTS, DEFAULT_GEOMETRY.block)
    expected = F.conv2d(torch.tensor(image)[None, None], torch.tensor(weight), stride=3).flatten()
    # The conv output comes out repeated with period 512, as the fc1 step needs.
    np.testing.assert_allclose(result, np.tile(expected.numpy(), SLOTS // 512), atol=1e-9)


def test_baby_step_giant_step_diagonals_compute_a_matvec_in_plaintext():
    rng = np.random.default_rng(2)
    matrix, x = rng.normal(size=(128, 512)), rng.normal(size=512)
    diagonals = bsgs_diagonals(matrix, SLOTS)
    baby = len(diagonals[0])
    rotated = [rotate(np.tile(x, SLOTS // 512), b) for b in range(baby)]
    result = np.zeros(SLOTS)
    for row in reversed(diagonals):
        result = rotate(result, baby) + sum(r * d for r, d in zip(rotated, row))
    np.testing.assert_allclose(fold(result, 512, 128)[:128], matrix @ x, atol=1e-9)


def test_server_holds_no_secret_key_and_cannot_decrypt(server, client):
    assert client.context.has_secret_key()
    assert not server.context.has_secret_key()
    assert server.context.is_public()
    with pytest.raises(ValueError):
        server.context.secret_key()
    with pytest.raises(ValueError, match="decryption"):
        server.context.decryptor()


def test_decrypted_server_output_equals_plaintext_logits(trained_model, client, server, test_images):
    with torch.no_grad():
        expected = trained_model(test_images).double().numpy()
    for image, plain in zip(test_images, expected):
        logits = client.decrypt_logits(server.classify(client.encrypt_image(image[0].numpy())))
        np.testing.assert_allclose(logits, plain, atol=0.02)
        assert logits.argmax() == plain.argmax()


def test_ciphertexts_are_not_the_image(client, test_images):
    encrypted = client.encrypt_image(test_images[0, 0].numpy())
    assert len(encrypted) == DEFAULT_GEOMETRY.input_ciphertexts(SLOTS)
    assert all(len(data) > 100_000 for data in encrypted)  # ~220 kB each, seeded
    pixels = test_images[0, 0].numpy().astype(np.float64).tobytes()
    assert pixels[:64] not in encrypted[0]


def test_batch_packing_matches_plaintext():
    """One image per slot; a narrow CryptoCNN keeps the scalar products few and the test fast."""
    torch.manual_seed(0)
    model = CryptoCNN(channels=2, hidden=16).eval()
    images = normalize(load_mnist().test_images[:50])
    client = HeClient(rotations=False)
    server = HeServer(model, client.public_context)
    logits = client.decrypt_batch(server.classify_batch(client.encrypt_batch(images[:, 0].numpy())), 50)
    with torch.no_grad():
        expected = model(images).double().numpy()
    np.testing.assert_allclose(logits, expected, atol=0.01)
    assert not client.public_context.galois_keys  # batches need no rotation keys
    with pytest.raises(ValueError, match="rotation keys"):
        server.classify([])
