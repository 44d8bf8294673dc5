"""What the Draw and Encrypted Test pages share: which model they run, the scheme chosen, the user's HE keys
(which the server takes back when idle)."""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path

import streamlit as st
from torch import nn

from fed_core.encrypted import SCHEMES, Scheme, scheme_for
from fed_core.he.ckks import HeClient, HeServer
from fed_core.limits.budget import SessionCache, load_budget
from fed_core.models import ENCRYPTABLE_MODELS, MODEL_LABELS, is_encryptable, load_model
from ui import session

log = logging.getLogger(__name__)

PRETRAINED_PATH = Path(__file__).resolve().parent.parent / "assets" / "pretrained_crypto_cnn.pt"
PRETRAINED_SOURCE = "the small pretrained model shipped with the app"


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


def scheme_picker(key: str, default: str = "he", **options: object) -> Scheme:
    """The scheme the user picks, set up with ``options`` (see :func:`fed_core.encrypted.scheme_for`)."""
    names = list(SCHEMES)
    name = st.radio("Encryption scheme", names, names.index(default), format_func=lambda n: SCHEMES[n].label, key=key)
    return scheme_for(name, **options)


@st.cache_resource
def he_key_cache() -> SessionCache:
    """Every session's HE keys (about 160 MB each), taken back when idle or when too many sessions hold some."""
    budget = load_budget()
    cache = SessionCache(budget.he_key_idle_seconds, budget.he_key_sets)
    sweep_every = min(60.0, budget.he_key_idle_seconds / 4)
    threading.Thread(target=cache.sweep_forever, args=(sweep_every,), name="he-key-sweeper", daemon=True).start()
    return cache


def he_keys() -> dict:
    """This session's entry in the key cache, {"client": HeClient, "server": (model, HeServer)}, made (again) if
    needed, saying so when the server had taken the previous keys back."""
    key_id = st.session_state.setdefault(session.HE_KEY_ID, secrets.token_hex(16))
    cache = he_key_cache()
    entry = cache.get(key_id)
    if entry is None:
        if st.session_state.get(session.HE_KEYS_MADE):
            st.info(
                "Your previous encryption keys were released to free the server's memory (unused for a while, "
                "or other visitors needed the room); new ones are being made."
            )
        with st.spinner("Making your encryption keys…"):
            entry = {"client": HeClient()}
        cache.put(key_id, entry)
        st.session_state[session.HE_KEYS_MADE] = True
    return entry


def held_key_seconds() -> tuple[float, float] | None:
    """How long this session's keys took to make and the server took to load them, if it still holds both
    (without making keys)."""
    key_id = st.session_state.get(session.HE_KEY_ID)
    entry = he_key_cache().get(key_id) if key_id else None
    if entry is None or "server" not in entry:
        return None
    return entry["client"].keygen_seconds, entry["server"][1].setup_seconds


def session_he_keys(model: nn.Module) -> tuple[HeClient, HeServer]:
    """This session's HE keys, made once and reused for every digit while they are in use, and the server side
    for them and this model, kept while the model stays the same (``HeScheme``'s ``keys``)."""
    entry = he_keys()
    cached = entry.get("server")
    if cached is None or cached[0] is not model:
        entry["server"] = cached = (model, HeServer(model, entry["client"].public_context))
    return entry["client"], cached[1]


def key_release_note() -> str:
    minutes = load_budget().he_key_idle_seconds / 60
    return (
        f"Your keys stay on this server while you use them and are released after {minutes:.0f} min without use "
        "(new ones are made when you next classify)."
    )
