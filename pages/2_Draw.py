"""Draw: a digit drawn on the canvas is encrypted, classified by the server, and decrypted by you."""

import hashlib

import streamlit as st
from streamlit_drawable_canvas import st_canvas

from fed_core.drawing.preprocess import CANVAS_SIDE, DrawingError, PreparedDigit, prepare_digit, read_canvas_png
from fed_core.encrypted import DigitResult, Scheme
from fed_core.encrypted.he import HeServerView
from fed_core.encrypted.mpc import MpcServerView
from ui import encrypted_views as views
from ui import session
from ui.common import CHART_CONFIG, format_bytes, format_duration, shown_safely
from ui.encrypted_common import (
    encryptable_model,
    held_key_seconds,
    key_release_note,
    scheme_picker,
    session_he_keys,
)
from ui.nav import in_frame

STROKE_WIDTH = 18

in_frame()
st.title("Draw a digit, classify it encrypted")
st.caption(
    "Your digit is encrypted with keys only you hold; the model computes on the encrypted data and "
    "sends back an encrypted answer that only you can read. (In this demo both sides run on the same "
    "server; in a deployment the encrypting side would be your device.)"
)


def canvas_key() -> str:
    """Clearing swaps in a fresh canvas by changing its key."""
    return f"canvas_{st.session_state.get(session.CANVAS_VERSION, 0)}"


def clear() -> None:
    st.session_state[session.CANVAS_VERSION] = st.session_state.get(session.CANVAS_VERSION, 0) + 1
    st.session_state.pop(session.DRAW_RESULT, None)


def canvas_png() -> bytes | None:
    """Show the canvas; return its PNG as the browser sent it, or None while nothing is drawn.

    The canvas is a bidirectional component: any websocket client can put any value in its place. A value
    the component cannot even unpack (not a base64 data URL) becomes b"", which read_canvas_png refuses
    like any other bad PNG, with a message on the page.
    """
    try:
        canvas = st_canvas(
            stroke_width=STROKE_WIDTH,
            stroke_color="#FFFFFF",
            background_color="#000000",
            height=CANVAS_SIDE,
            width=CANVAS_SIDE,
            drawing_mode="freedraw",
            return_image_data=True,
            key=canvas_key(),
        )
        return canvas.image_bytes
    except (AttributeError, TypeError, KeyError, ValueError):
        return b""


def prepared_drawing(png: bytes | None) -> PreparedDigit:
    """The drawing as the model will see it, or DrawingError saying why not.

    Prepared once per distinct drawing: the outcome is kept in the session under the PNG's hash, so the
    reruns that follow (every click, every chart) and Classify reuse it instead of decoding again.
    """
    if png is None:
        raise DrawingError("The canvas is empty: draw a digit first.")
    digest = hashlib.sha256(png).digest()
    cached = st.session_state.get(session.DRAW_PREPARED)
    if cached is None or cached[0] != digest:
        try:
            outcome: PreparedDigit | str = prepare_digit(read_canvas_png(png))
        except DrawingError as exc:
            outcome = str(exc)
        cached = st.session_state[session.DRAW_PREPARED] = (digest, outcome)
    if isinstance(cached[1], str):
        raise DrawingError(cached[1])
    return cached[1]


def classify(model, png: bytes | None, scheme: Scheme) -> None:
    """Classify the prepared drawing; keep the outcome for the reruns that follow."""
    st.session_state.pop(session.DRAW_RESULT, None)
    with shown_safely("classifying your digit"):
        try:
            digit = prepared_drawing(png)
            st.session_state[session.DRAW_RESULT] = (digit, scheme.classify(model, digit.tensor))
        except DrawingError as exc:
            st.warning(str(exc))


def show_encrypted_input(digit: PreparedDigit, result: DigitResult) -> None:
    match result.server_view:
        case HeServerView() as view:
            st.subheader("2 · Encrypted with your key")
            n = view.input_ciphertexts
            st.write(
                f"The image became **{n} ciphertext{'s' if n > 1 else ''}**, "
                f"{format_bytes(view.input_bytes)} in all (CKKS, 8192-degree polynomials). "
                f"A glimpse of {'the first one' if n > 1 else 'it'}:"
            )
            st.code(view.ciphertext_glimpse, language=None, wrap_lines=True)
        case MpcServerView():
            st.subheader("2 · Split into two random shares")
            share_a, share_b = result.share_images
            c1, c2, c3 = st.columns(3)
            c1.image(views.enlarge(digit.pixels, 4), caption="your digit")
            c2.image(views.enlarge(share_a, 4), caption="share held by party A")
            c3.image(views.enlarge(share_b, 4), caption="share held by party B")
            st.caption(
                "Each share on its own is a grid of uniformly random 64-bit numbers (pictured: their lowest byte); "
                "only their sum, modulo 2^64, is your image. The model's weights are shared the same way."
            )
        case _:
            raise TypeError(f"The page cannot show the encrypted input of {result.scheme!r}.")


def show_server_view(result: DigitResult) -> None:
    st.subheader("3 · What the server sees")
    match result.server_view:
        case HeServerView() as view:
            st.markdown(
                f"- your **public context** ({format_bytes(view.public_context_bytes)}): the parameters and the "
                f"keys to multiply and rotate ciphertexts; secret key included: **{view.server_has_secret_key}**\n"
                f"- the ciphertexts above: noise to anyone without your secret key\n"
                f"- it returns **one ciphertext** of {format_bytes(view.output_bytes)} holding the 10 scores "
                "and nothing else (every other slot decrypts to zero, up to CKKS noise)"
            )
        case MpcServerView() as view:
            st.markdown(
                f"- each party holds one share of your image and of every weight, and never the other share\n"
                f"- to multiply, they open only masked values (Beaver triples): each sent "
                f"{format_bytes(view.bytes_per_party[0] - view.setup_bytes_per_party)} for your digit, plus "
                f"{format_bytes(view.setup_bytes_per_party)} once to prepare the weights, in {view.rounds} rounds\n"
                f"- a third party dealt {format_bytes(view.dealer_bytes)} of random triples beforehand, "
                f"without seeing any data\n"
                f"- the 10 scores leave the parties as shares too, which only you add up"
            )
        case _:
            raise TypeError(f"The page cannot show what the server of {result.scheme!r} sees.")


def show_answer(result: DigitResult) -> None:
    st.subheader("4 · Decrypted on your side")
    c1, c2 = st.columns([1, 3])
    c1.metric("Prediction", result.prediction)
    same = "the same" if result.plain_prediction == result.prediction else "a different answer"
    c1.metric("Plaintext model", result.plain_prediction, help=f"{same} without any encryption")
    c2.plotly_chart(
        views.probability_figure(result.probabilities, result.prediction), width="stretch", config=CHART_CONFIG
    )
    steps = [("encrypt", "Encrypt"), ("server_setup", "Server setup"), ("compute", "Compute"), ("decrypt", "Decrypt")]
    shown = [(label, result.seconds[key]) for key, label in steps if key in result.seconds]
    for column, (label, seconds) in zip(st.columns(len(shown)), shown):
        column.metric(label, format_duration(seconds))
    held = held_key_seconds() if isinstance(result.server_view, HeServerView) else None
    if held is not None:
        keygen, setup = held
        st.caption(
            f"Once, not per digit: your keys were made in {format_duration(keygen)}, and the server loaded them "
            f"with the model in {format_duration(setup)}. {key_release_note()}"
        )


def show_preview(png: bytes | None) -> None:
    """As you draw: the 28x28 the model will get, or why the drawing will not do."""
    if png is None:
        return
    try:
        digit = prepared_drawing(png)
    except DrawingError as exc:
        if "empty" not in str(exc):
            st.caption(f"Preview: {exc}")
        return
    st.image(views.enlarge(digit.pixels, 4), caption="Preview: what the model will see", width=112)


def show_result(digit: PreparedDigit, result: DigitResult) -> None:
    st.subheader("1 · What the model sees")
    st.image(views.enlarge(digit.pixels), caption="28×28, centred like MNIST")
    show_encrypted_input(digit, result)
    show_server_view(result)
    show_answer(result)


model = encryptable_model()
if model is None:
    st.stop()
scheme = scheme_picker("draw_scheme", keys=session_he_keys)
st.space("medium")  # the canvas's toolbar floats above it: without room it covers the scheme choice's labels
left, right = st.columns([1, 2], gap="large")
with left:
    png = canvas_png()
    b1, b2 = st.columns(2)
    clicked = b1.button("Classify", type="primary", width="stretch")
    b2.button("Clear", on_click=clear, width="stretch")
    show_preview(png)
with right:
    if clicked:
        with st.spinner("Encrypting and classifying…"):
            classify(model, png, scheme)
    if session.DRAW_RESULT in st.session_state:
        with shown_safely("showing the result"):
            show_result(*st.session_state[session.DRAW_RESULT])
    elif not clicked:
        st.info("Draw one digit (0–9) large in the black square, then press **Classify**.")
