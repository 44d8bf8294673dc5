"""``python -m fed_core encrypted-eval`` and ``classify``: what the Encrypted Test and Draw pages do."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from fed_core.cli.common import FractionBar, check_writable, positive_int
from fed_core.data.mnist import load_mnist, normalize
from fed_core.drawing.preprocess import prepare_digit, read_image
from fed_core.encrypted import SCHEMES, require_encryptable, scheme_for
from fed_core.encrypted.he import HE_PACKINGS
from fed_core.models import load_model
from fed_core.mpc.processes import PARTY_FORMS

TEST_IMAGES = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("encrypted-eval", help="Evaluate a model on MNIST test images under MPC or HE.")
    evaluate.add_argument("--model", type=Path, required=True, help="model file (save_model)")
    evaluate.add_argument("--scheme", choices=SCHEMES, default="mpc")
    evaluate.add_argument("--n", type=int, default=TEST_IMAGES, help="test images (1-10000)")
    evaluate.add_argument("--out", type=Path, help="write the full result as JSON here")
    evaluate.add_argument("--batch-size", type=positive_int, help="images per MPC batch / HE pass")
    evaluate.add_argument("--he-packing", choices=HE_PACKINGS, default="auto")
    evaluate.add_argument(
        "--parties",
        choices=PARTY_FORMS,
        default="in-process",
        help="MPC: simulate every party in this process, or run party 0, party 1 and the dealer as "
        "separate processes over loopback TCP (bytes and rounds counted on the wire)",
    )
    evaluate.set_defaults(func=run_encrypted_eval)

    classify = subparsers.add_parser("classify", help="Classify one digit image encrypted; prints JSON.")
    classify.add_argument("--model", type=Path, required=True, help="model file (save_model)")
    classify.add_argument("--image", type=Path, required=True, help="PNG/JPEG of one digit")
    classify.add_argument("--scheme", choices=SCHEMES, default="he")
    classify.set_defaults(func=run_classify)


def load_encryptable(path: Path) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    model, _meta = load_model(path)
    require_encryptable(model)
    return model


def run_encrypted_eval(args: argparse.Namespace) -> int:
    if not 1 <= args.n <= TEST_IMAGES:
        raise ValueError(f"--n must be between 1 and {TEST_IMAGES}, got {args.n}.")
    check_writable("--out", args.out)
    model = load_encryptable(args.model)
    scheme = scheme_for(args.scheme, parties=args.parties, packing=args.he_packing)
    mnist = load_mnist()
    progress = FractionBar(f"{args.scheme.upper()} evaluation")
    try:
        result = scheme.evaluate(
            model,
            normalize(mnist.test_images[: args.n]),
            mnist.test_labels[: args.n],
            batch_size=args.batch_size,
            progress=progress,
        )
    finally:
        progress.close()
    if args.out:
        args.out.write_text(json.dumps(result.to_dict(), indent=1))
    print(result.summary())
    return 0


def run_classify(args: argparse.Namespace) -> int:
    model = load_encryptable(args.model)
    digit = prepare_digit(read_image(args.image))
    result = scheme_for(args.scheme).classify(model, digit.tensor)
    print(json.dumps(result.to_dict(), indent=1))
    return 0
