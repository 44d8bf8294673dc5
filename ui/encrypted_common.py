"""What the Draw and Encrypted Test pages share: which model they run, and the user's HE keys."""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st
from torch import nn

from fed_core.he import HeClient, HeServer
from fed_core.models import ENCRYPTABLE_MODELS, MODEL_LABELS, is_encryptable, load_model
from ui import session

log = logging.getLogger(__name__)

PRETRAINED_PATH = Path(__file__).resolve().parent.parent / "assets" / "pretrained_crypto_cnn.pt"
PRETRAINED_SOURCE = "the small pretrained model shipped with the app"
SCHEME_LABELS = {
    "he": "Homomorphic encryption (CKKS): the server computes on ciphertexts",
    "mpc": "Multi-party computation: two parties compute on random-looking shares",
}


def load_pretrained() -> None:
    """Put the shipped model where the Train page puts its trained one."""
    model, meta = load_model(PRETRAINED_PATH)
    st.session_state[session.TRAINED_MODEL] = {"model": model, "meta": {**meta, "source": PRETRAINED_SOURCE}}


def _offer_pretrained(reason: str) -> None:
    st.info(reason)
    if not PRETRAINED_PATH.exists():
        st.warning(
            "The pretrained model file is missing from this installation. Train a "
            f"{MODEL_LABELS['crypto_cnn']} on the **Train** page instead."
        )
        return
    if st.button("Use the small pretrained model", type="primary"):
        try:
            load_pretrained()
        except (OSError, ValueError):
            log.exception("Loading %s failed", PRETRAINED_PATH)
            st.error("The pretrained model file could not be read. Train a model on the **Train** page instead.")
            return
        st.rerun()


def encryptable_model() -> nn.Module | None:
    """The session's model if it can run encrypted; otherwise explain and offer the pretrained one."""
    entry = st.session_state.get(session.TRAINED_MODEL)
    accepted = ", ".join(MODEL_LABELS[name] for name in ENCRYPTABLE_MODELS)
    if entry is None:
        _offer_pretrained(
            "There is no trained model in this session yet. Train one on the **Train** page "
            f"(model: {accepted}), or use the small pretrained one."
        )
        return None
    meta = entry.get("meta", {})
    if not is_encryptable(entry["model"]):
        name = MODEL_LABELS.get(meta.get("model"), meta.get("model", "this model"))
        _offer_pretrained(
            f"Your trained model ({name}) has layers (ReLU, max-pooling) that these encrypted "
            f"schemes cannot evaluate. They accept only: {accepted}."
        )
        return None
    st.caption(model_caption(meta))
    return entry["model"]


def model_caption(meta: dict) -> str:
    source = meta.get("source", "your trained model")
    accuracy = meta.get("test_accuracy")
    accuracy_text = f", {accuracy:.2%} plaintext test accuracy" if accuracy is not None else ""
    return f"Model: {MODEL_LABELS.get(meta.get('model'), 'unknown')} — {source}{accuracy_text}."


def scheme_picker(key: str, default: str = "he") -> str:
    schemes = list(SCHEME_LABELS)
    return st.radio("Encryption scheme", schemes, schemes.index(default), format_func=SCHEME_LABELS.get, key=key)


def he_client() -> HeClient:
    """This browser session's HE keys: made once, reused for every digit."""
    if session.HE_CLIENT not in st.session_state:
        with st.spinner("Making your encryption keys (once per session)…"):
            st.session_state[session.HE_CLIENT] = HeClient()
    return st.session_state[session.HE_CLIENT]


def he_server(model: nn.Module) -> HeServer:
    """The server side for this session's keys and this model, kept while the model stays the same."""
    cached = st.session_state.get(session.HE_SERVER)
    if cached is None or cached[0] is not model:
        st.session_state[session.HE_SERVER] = (model, HeServer(model, he_client().public_context))
    return st.session_state[session.HE_SERVER][1]
