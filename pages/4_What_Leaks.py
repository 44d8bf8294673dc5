"""What leaks: a curious or malicious server rebuilds workers' training images, then meets the defences."""

from dataclasses import replace

import streamlit as st

from fed_core.attack import (
    MAX_IMAGES,
    AttackOptions,
    AttackResult,
    observe,
    reconstruct,
    rob,
    stage_malicious_round,
    stage_update,
)
from fed_core.config import TrainConfig
from fed_core.data.mnist import MnistFileError, load_mnist
from fed_core.privacy.secagg import MIN_SURVIVORS
from ui import attack_views as views
from ui import session
from ui.common import format_duration, heavy_task_slot, shown_safely
from ui.nav import in_frame

FEDERATION = TrainConfig()  # the Train page's default run: 5 IID workers, the crypto-friendly CNN
EXPECTED_SECONDS = 30.0
MAX_LOCAL_STEPS = 16
MAX_WORKERS = 10  # workers a malicious round can include

in_frame()
st.title("What leaks from the workers' updates")
st.caption(
    "A worker's images never leave it, but its update does. A *curious* server takes what it receives and "
    "searches for images that would have produced it (gradient inversion). A *malicious* server goes further: it "
    "edits the model it sends so that the updates carry the images themselves. The workers are simulated, so "
    "their real images can be shown beside what the server rebuilds."
)


def settings() -> dict:
    c1, c2, c3, c4 = st.columns(4)
    server = c1.radio("The server is", list(views.SERVERS), format_func=views.SERVERS.get)
    images = c2.number_input("Images per update", 1, MAX_IMAGES, 1, help="each attacked worker trains on just these")
    local_steps = c2.number_input(
        "Local steps", 1, MAX_LOCAL_STEPS, 1, help="SGD steps per round: one epoch in batches of images / steps"
    )
    defence = c3.radio("What the server receives", list(views.DEFENCES), format_func=views.DEFENCES.get)
    choice = dict(server=server, images=int(images), local_steps=int(local_steps), defence=defence, noise=1.0)
    if server == "curious":
        choice["worker"] = int(c4.selectbox("Worker", range(FEDERATION.workers), format_func=lambda w: f"W{w}"))
        choice["round_idx"] = int(c4.number_input("Round", 1, 5, 1, help="the federation trains the rounds before it"))
        if defence in ("dp", "both"):
            choice["noise"] = st.slider("DP noise multiplier z", 0.0001, 1.0, 0.01, format="%.4f", help=views.DP_HELP)
    else:
        # Secure aggregation releases no sum of fewer than MIN_SURVIVORS updates (secagg.py).
        fewest = MIN_SURVIVORS if defence in ("secure-agg", "both") else 1
        choice["workers"] = int(c4.number_input("Workers in the round", fewest, MAX_WORKERS, 5))
        if defence in ("dp", "both"):
            st.caption(
                f"DP here is the app's example-level DP-SGD inside every worker at its defaults: clip "
                f"{FEDERATION.dp_clip:g}, noise multiplier {FEDERATION.dp_noise:g}."
            )
    return choice


def attack(choice: dict) -> None:
    """Stage the round, hand the server what it sees, and let it work, showing the result live."""
    try:
        data = load_mnist()
    except MnistFileError as exc:
        st.error(f"The MNIST data could not be loaded: {exc}")
        return
    with heavy_task_slot(EXPECTED_SECONDS, "attack or encrypted evaluation") as admitted:
        if not admitted:
            return
        if choice["server"] == "curious":
            staged, result = attack_curious(choice, data)
        else:
            staged, result = attack_malicious(choice, data)
    views.remember(choice, staged, result)


def attack_curious(choice: dict, data) -> tuple[object, AttackResult]:
    with st.spinner(f"Worker W{choice['worker']} trains round {choice['round_idx']} on its images…"):
        staged = stage_update(
            FEDERATION, data, choice["worker"], choice["images"], choice["round_idx"], choice["local_steps"]
        )
    observed = observe(
        FEDERATION.model, staged.global_vector, staged.update, staged.settings, choice["defence"], choice["noise"]
    )
    live = views.LiveSearch(staged.images, "The server searches for the images…")
    try:
        return staged, reconstruct(observed, AttackOptions(), live.update, staged.images, data)
    finally:
        live.close()


def attack_malicious(choice: dict, data) -> tuple[object, AttackResult]:
    federation = replace(FEDERATION, workers=choice["workers"])
    with st.spinner(f"The server sends an imprinted model; {choice['workers']} workers train on it…"):
        staged = stage_malicious_round(federation, data, choice["images"], choice["local_steps"], choice["defence"])
    live = views.LiveSearch(staged.images, "The server reads the images out of what it received…")
    try:
        return staged, rob(staged, live.update, FEDERATION.model)
    finally:
        live.close()


def show(entry: tuple[dict, object, AttackResult]) -> None:
    choice, staged, result = entry
    if choice["server"] == "curious":
        title = f"Curious server, worker W{choice['worker']}, round {choice['round_idx']}"
    else:
        title = f"Malicious server, {choice['workers']} workers"
    st.subheader(f"{title}: {views.received(choice)}")
    views.show_reconstruction(staged.images, staged.labels.tolist(), result)
    st.caption(views.verdict(result))
    st.caption(views.explanation(choice["server"], choice["defence"]))
    if result.worker_check:
        st.caption(f"A worker that checks the model it is sent would refuse this one: {result.worker_check[0]}.")


choice = settings()
if st.button("Attack this update", type="primary"):
    with shown_safely("running the attack"):
        attack(choice)
with shown_safely("showing the attack"):
    attacks = st.session_state.get(session.ATTACKS, [])
    if attacks:
        show(attacks[-1])
        table = views.attacks_table(attacks)
        st.subheader("Your attacks so far")
        st.dataframe(table, width="stretch", hide_index=True)
        if any(choice["server"] == "malicious" for choice, _, _ in attacks):
            st.caption(views.CHECK_NOTE)
    else:
        st.info(
            "Pick a server and press **Attack this update**. Try the curious server with *secure aggregation* and with "
            "*differential privacy*, then the malicious one with secure aggregation: it gets through. Each attack "
            f"takes {format_duration(EXPECTED_SECONDS)} at most."
        )
