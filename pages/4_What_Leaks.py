"""What leaks: a curious server rebuilds a worker's training images from its update, then meets the defences."""

import streamlit as st

from fed_core.attack import AttackOptions, AttackResult, observe, reconstruct, stage_update
from fed_core.config import TrainConfig
from fed_core.data import MnistFileError, load_mnist
from ui import attack_views as views
from ui import session
from ui.common import format_duration, heavy_task_slot, shown_safely
from ui.nav import in_frame

FEDERATION = TrainConfig()  # the Train page's default run: 5 IID workers, the crypto-friendly CNN
EXPECTED_SECONDS = 20.0

in_frame()
st.title("What leaks from a worker's update")
st.caption(
    "A worker's images never leave it, but its update does. Here the server is curious: it takes one worker's "
    "update, exactly what it receives in a round, and searches for images that would have produced it "
    "(gradient inversion: labels as in iDLG, then gradient matching as in DLG and Geiping et al. 2020). "
    "The worker is simulated, so its real images can be shown beside what the server rebuilds."
)


def settings() -> dict:
    c1, c2, c3, c4 = st.columns(4)
    worker = c1.selectbox("Worker", range(FEDERATION.workers), format_func=lambda w: f"W{w}")
    round_idx = c2.number_input("Round", 1, 5, 1, help="the federation trains the rounds before it first")
    images = c3.number_input("Images in its update", 1, 4, 1, help="a worker that trained on just these images")
    defence = c4.radio("What the server receives", list(views.DEFENCES), format_func=views.DEFENCES.get)
    noise = 1.0
    if defence == "dp":
        noise = st.slider("DP noise multiplier z", 0.0001, 1.0, 0.01, format="%.4f", help=views.DP_HELP)
    return dict(worker=int(worker), round_idx=int(round_idx), images=int(images), defence=defence, noise=noise)


def attack(choice: dict) -> None:
    """Stage the worker's round, hand the server what it sees, and let it search, showing the search live."""
    try:
        data = load_mnist()
    except MnistFileError as exc:
        st.error(f"The MNIST data could not be loaded: {exc}")
        return
    with heavy_task_slot(EXPECTED_SECONDS, "attack or encrypted evaluation") as admitted:
        if not admitted:
            return
        with st.spinner(f"Worker W{choice['worker']} trains round {choice['round_idx']} on its images…"):
            staged = stage_update(FEDERATION, data, choice["worker"], choice["images"], choice["round_idx"])
        observed = observe(
            FEDERATION.model, staged.global_vector, staged.update, FEDERATION.local, choice["defence"], choice["noise"]
        )
        live = views.LiveSearch(staged.images)
        result = reconstruct(observed, AttackOptions(), live.update, staged.images, data)
        live.close()
    views.remember(choice, staged, result)


def show(entry: tuple[dict, object, AttackResult]) -> None:
    choice, staged, result = entry
    st.subheader(f"Worker W{choice['worker']}, round {choice['round_idx']}: {views.DEFENCES[choice['defence']]}")
    views.show_reconstruction(staged.images, staged.labels.tolist(), result)
    st.caption(views.verdict(result))


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
        st.caption(views.PUBLIC_DATA_NOTE)
    else:
        st.info(
            "Pick a worker and press **Attack this update**. Then try again with *secure aggregation* and with "
            f"*differential privacy*: each attack takes about {format_duration(EXPECTED_SECONDS)} at most."
        )
