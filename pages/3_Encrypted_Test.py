"""Encrypted Test: the model on MNIST test images while images, weights and answers stay encrypted."""

import streamlit as st

from fed_core.data.mnist import MnistFileError, load_mnist, normalize
from fed_core.encrypted import EvalResult, Scheme, scheme_for
from fed_core.encrypted.he import HeCommunication
from fed_core.encrypted.mpc import MpcCommunication
from fed_core.limits.budget import load_budget
from ui import encrypted_views as views
from ui import session
from ui.common import CHART_CONFIG, ProgressBar, format_bytes, format_duration, heavy_task_slot, shown_safely
from ui.encrypted_common import encryptable_model, scheme_picker
from ui.nav import in_frame

MAX_IMAGES = 10_000

in_frame()
st.title("The test set, encrypted")
st.caption(
    "Every test image is encrypted (or secret-shared) before the model sees it; the model answers on "
    "encrypted data, and the answers are decrypted and compared with the plaintext model's."
)


def estimate_text(scheme: Scheme, n: int) -> str:
    return f"Estimated time: about {format_duration(scheme.estimate_seconds(n))}. {scheme.describe(n)}"


def over_cap(scheme: Scheme, n: int) -> bool:
    """Say so if this server evaluates fewer images per request under ``scheme``."""
    cap = scheme.images_per_request(load_budget())
    if n > cap:
        st.error(
            f"This server evaluates at most {cap:,} images per request under {scheme.name.upper()}: lower the number."
        )
    return n > cap


def run(model, scheme: Scheme, n: int) -> None:
    """Evaluate once a server-wide slot is free (waiting a little for it); say how long to wait if none frees."""
    try:
        mnist = load_mnist()
    except MnistFileError as exc:
        st.error(f"The MNIST data could not be loaded: {exc}")
        return
    with heavy_task_slot(scheme.estimate_seconds(n), "encrypted evaluation") as admitted:
        if not admitted:
            return
        progress = ProgressBar(f"Evaluating {n:,} encrypted images…")
        with shown_safely("running the encrypted evaluation"):
            st.session_state[session.ENCRYPTED_EVAL] = scheme.evaluate(
                model, normalize(mnist.test_images[:n]), mnist.test_labels[:n], progress=progress
            )


def show_metrics(result: EvalResult) -> None:
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Plaintext accuracy", f"{result.plain_accuracy:.2%}")
    c2.metric(
        "Encrypted accuracy",
        f"{result.encrypted_accuracy:.2%}",
        delta=f"{100 * (result.encrypted_accuracy - result.plain_accuracy):+.2f} points",
        delta_color="off",
    )
    c3.metric("Same prediction", f"{result.agreement:.2%}", help="images where both models give the same digit")
    c4.metric(
        "Largest logit error",
        f"{result.max_logit_error:.2g}",
        help="largest difference between a decrypted score and the plaintext one",
    )
    c5.metric(
        "Images per second",
        f"{result.images_per_second:,.0f}",
        help=f"{result.n:,} images in {format_duration(result.total_seconds)}",
    )


def communication_text(result: EvalResult) -> str:
    match result.communication:
        case MpcCommunication() as comm:
            return (
                f"**Communication.** Each compute party sent {format_bytes(comm.bytes_per_party[0])} "
                f"({format_bytes(comm.online_bytes_per_image / 2)} per image) in {comm.rounds} rounds "
                f"({comm.rounds_per_batch} per batch); the dealer sent {format_bytes(comm.dealer_bytes)} "
                f"of Beaver triples beforehand; sharing the images and weights took "
                f"{format_bytes(comm.input_bytes)}. Fixed point: {comm.fixed_point_fractional_bits} "
                f"fractional bits in 64-bit integers."
            )
        case HeCommunication() as comm:
            packing = "two images per slot" if result.packing == "batch" else "one image at a time"
            return (
                f"**Communication** (HE, {packing}). Public context sent to the server "
                f"{format_bytes(comm.public_context_bytes)} (no secret key); encrypted images uploaded "
                f"{format_bytes(comm.upload_bytes)}; encrypted scores downloaded {format_bytes(comm.download_bytes)} "
                f"({format_bytes(comm.bytes_per_image)} per image in all)."
            )
        case _:
            raise TypeError(f"The page cannot show the communication of {result.scheme!r}.")


def show_timings(result: EvalResult) -> None:
    labels = {
        "keygen": "Keys",
        "server_setup": "Server setup",
        "encrypt": "Encrypt",
        "compute": "Compute",
        "decrypt": "Decrypt",
        "total": "Total",
    }
    shown = [(label, result.seconds[key]) for key, label in labels.items() if key in result.seconds]
    for column, (label, seconds) in zip(st.columns(len(shown)), shown):
        column.metric(label, format_duration(seconds))


def show_examples(result: EvalResult) -> None:
    st.subheader("A few test images")
    st.caption("Any disagreement between the two models comes first, then a few mistakes.")
    images = load_mnist().test_images
    indices = views.showcase_indices(result.labels, result.plain_predictions, result.encrypted_predictions)
    for row in range(0, len(indices), 4):
        for column, i in zip(st.columns(4), indices[row : row + 4]):
            column.image(views.enlarge(images[i].numpy(), 3))
            column.caption(
                f"true {result.labels[i]} · plain {result.plain_predictions[i]} · "
                f"encrypted {result.encrypted_predictions[i]}"
            )


def show(result: EvalResult) -> None:
    st.success(result.summary())
    st.caption(scheme_for(result.scheme).describe(result.n))
    show_metrics(result)
    st.markdown(communication_text(result))
    show_timings(result)
    left, right = st.columns([3, 2])
    left.plotly_chart(views.confusion_figure(result.confusion), width="stretch", config=CHART_CONFIG)
    with right:
        show_examples(result)


model = encryptable_model()
if model is None:
    st.stop()
scheme = scheme_picker("test_scheme", default="mpc")
n = int(
    st.number_input("Test images", 1, MAX_IMAGES, 1000, step=500, help="the first n of the 10,000 MNIST test images")
)
st.caption(estimate_text(scheme, n))
too_many = over_cap(scheme, n)
if st.button("Run encrypted evaluation", type="primary", disabled=too_many):
    run(model, scheme, n)
if session.ENCRYPTED_EVAL in st.session_state:
    with shown_safely("showing the results"):
        show(st.session_state[session.ENCRYPTED_EVAL])
