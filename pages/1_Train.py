"""Train: watch a federation of workers learn MNIST, round by round."""

import streamlit as st

from fed_core.config import LIMITS, TrainConfig, estimate_seconds, problems
from fed_core.data.mnist import MnistFileError, load_mnist
from fed_core.engines import engine_for
from fed_core.federation.server import publishes_workers
from fed_core.federation.strategy import STRATEGIES
from fed_core.job import BUSY, OWNER_BUSY, JobSnapshot, TrainingJob
from fed_core.limits.budget import budget_problems, estimate_run_bytes, load_budget
from fed_core.models import INIT_METHODS, MODEL_LABELS
from ui import engine_views, privacy_views, session
from ui import train_views as views
from ui.common import CHART_CONFIG, format_duration, shown_safely
from ui.nav import in_frame
from ui.runs import current_job, ensure_owner_token, job_slots, keep_trained_model, owns, remember_owner

D = TrainConfig()
INIT_LABELS = {
    "default": "PyTorch default",
    "kaiming": "He (Kaiming) normal",
    "xavier": "Xavier uniform",
    "uniform": "plain uniform U(-0.05, 0.05)",
}
PARTITION_LABELS = {
    "iid": "IID (shuffled)",
    "dirichlet": "Dirichlet label skew",
    "shards": "Label shards (FedAvg paper)",
}

in_frame()
st.title("Federated training, live")
st.caption(
    "The server sends the global model to a random sample of workers; each trains on its own "
    "private digits and sends back only its update; the server averages the updates, weighted by "
    "how many examples each worker has."
)


def settings_form() -> TrainConfig:
    c1, c2, c3, c4 = st.columns(4)
    workers = c1.number_input("Workers", *LIMITS["workers"], D.workers, help="how many data owners (1-100)")
    rounds = c2.number_input("Rounds", *LIMITS["rounds"], D.rounds, help="communication rounds (1-200)")
    fraction = c3.slider("Fraction C sampled per round", 0.05, 1.0, D.fraction, 0.05)
    partition = c4.selectbox("How data is split", list(PARTITION_LABELS), format_func=PARTITION_LABELS.get)
    alpha, shards = D.alpha, D.shards_per_worker
    if partition == "dirichlet":
        alpha = c4.number_input("alpha (smaller = more skew)", 0.01, 100.0, D.alpha, 0.1)
    elif partition == "shards":
        shards = c4.number_input("Shards per worker", *LIMITS["shards_per_worker"], D.shards_per_worker)
    engine, manual_approval = engine_views.engine_settings(st.columns(2)[0])
    privacy = privacy_views.privacy_settings(engine)
    with st.expander("More settings: local training, initialisation, server optimizer and strategy, dropout"):
        a1, a2, a3, a4 = st.columns(4)
        local_epochs = a1.number_input("Local epochs E", *LIMITS["local_epochs"], D.local_epochs)
        batch_size = a1.number_input("Batch size B", *LIMITS["batch_size"], D.batch_size)
        lr = a2.number_input("Learning rate", 0.0001, 10.0, D.lr, 0.005, format="%.4f")
        momentum = a2.number_input("Local momentum", 0.0, 0.99, D.momentum, 0.05)
        init = a3.selectbox("Weight initialisation", INIT_METHODS, format_func=INIT_LABELS.get)
        model = a3.selectbox("Model", list(MODEL_LABELS), format_func=MODEL_LABELS.get)
        server_lr = a4.number_input("Server learning rate", 0.01, 10.0, D.server_lr, 0.1)
        server_momentum = a4.number_input("Server momentum", 0.0, 0.99, D.server_momentum, 0.1)
        strategy = a4.selectbox(
            "Strategy",
            list(STRATEGIES),
            format_func=STRATEGIES.get,
            help="FedProx and SCAFFOLD keep workers from drifting apart on non-IID data",
        )
        prox_mu = D.prox_mu
        if strategy == "fedprox":
            prox_mu = a4.number_input("FedProx mu", 0.0, 10.0, D.prox_mu, 0.01, format="%.3f")
        dropout = a1.slider(
            "Worker dropout rate",
            0.0,
            0.9,
            D.dropout,
            0.05,
            help="chance that a sampled worker fails to report; the round goes on without it",
        )
        seed = a2.number_input("Seed", *LIMITS["seed"], D.seed)
        shapley = a3.checkbox(
            "Shapley values", D.shapley, help="each worker's fair share of the round's gain; costs a few model scores"
        )
        augment = a3.checkbox(
            "Augment: redraw digits at random",
            D.augment,
            help="each batch with random stroke widths, small rotations and shears, scale, shift and elastic "
            "distortion. Turn it on if the model is for the Draw page: bold, slanted or small drawings are read "
            "better. Costs time (in the estimate) and a little MNIST test accuracy.",
        )
    return TrainConfig(
        workers=int(workers),
        rounds=int(rounds),
        fraction=float(fraction),
        local_epochs=int(local_epochs),
        batch_size=int(batch_size),
        lr=float(lr),
        momentum=float(momentum),
        partition=partition,
        alpha=float(alpha),
        shards_per_worker=int(shards),
        init=init,
        dropout=float(dropout),
        seed=int(seed),
        model=model,
        server_lr=float(server_lr),
        server_momentum=float(server_momentum),
        strategy=strategy,
        prox_mu=float(prox_mu),
        augment=augment,
        engine=engine,
        manual_approval=manual_approval,
        shapley=shapley,
        **privacy,
    )


def start(config: TrainConfig) -> bool:
    """Start a run owned by this session; on failure say why on the page and return False."""
    try:
        load_mnist()  # fail here, with the file named, rather than inside the run
    except MnistFileError as exc:
        st.error(f"The MNIST data could not be loaded: {exc}")
        return False
    slots = job_slots()
    job = TrainingJob(engine_for(config), owner_token=ensure_owner_token())
    refused = slots.try_start(job)
    if refused == OWNER_BUSY:
        st.warning("You already have a run training: stop it, or wait for it to finish, before starting another.")
        return False
    if refused == BUSY:
        st.warning(
            f"The server is busy: {slots.capacity} runs are training right now. A slot should free up "
            f"in about {format_duration(slots.wait_estimate())}; please try again then."
        )
        return False
    st.session_state[session.JOB] = job
    st.query_params[session.RUN_PARAM] = job.job_id
    return True


def settings_check(config: TrainConfig) -> list[str]:
    """Show why the settings cannot run here (invalid, or over this server's budget), or what they will cost."""
    budget = load_budget()
    found = problems(config) or budget_problems(config, budget)
    if found:
        st.error("These settings can't run here:\n\n" + "\n".join(f"- {p}" for p in found))
    else:
        text = f"Estimated time on a 2-core machine: about {format_duration(estimate_seconds(config))}"
        if config.engine == "inprocess":
            text += f"; memory about {estimate_run_bytes(config) / 1e6:,.0f} MB"
        text += f". This server stops any run after {format_duration(budget.run_deadline_seconds)}"
        if config.manual_approval:
            text += f", and a run whose job nobody approves within {format_duration(budget.approval_seconds)}"
        st.caption(text + ".")
    return found


def controls(config: TrainConfig, job: TrainingJob | None, found: list[str]) -> bool:
    """Start for everyone, Stop for the owner of a live run; True if the view should poll for new rounds."""
    live = job is not None and not job.snapshot().finished
    mine = job is not None and owns(job)
    b1, b2, _ = st.columns([1, 1, 6])
    if b1.button("Start", type="primary", disabled=(live and mine) or bool(found)) and start(config):
        st.rerun()
    if mine and b2.button("Stop", disabled=not live):
        job.stop()
    if job is not None and not mine:
        st.info(
            "You are watching a run started in another browser: read-only (only its owner can stop it, "
            "download its results or use its model)."
        )
    return live


def show_progress(snapshot: JobSnapshot, mine: bool) -> None:
    text = f"Round {snapshot.round} of {snapshot.total_rounds} · {format_duration(snapshot.elapsed)} elapsed"
    if snapshot.eta is not None:
        text += f" · about {format_duration(snapshot.eta)} left"
    st.progress(snapshot.round / snapshot.total_rounds, text=text)
    kept = f" The model of round {snapshot.round}, its last finished round, is kept." if snapshot.round else ""
    if snapshot.status == "failed":
        st.error(f"The run stopped with an error in round {snapshot.round + 1}: {snapshot.error}{kept}")
    elif snapshot.status == "stopped" and snapshot.stop_reason:
        st.warning(f"{snapshot.stop_reason} It ran {snapshot.round} round(s).{kept}")
    elif snapshot.status == "stopped":
        who = "you" if mine else "its owner"
        st.warning(f"Stopped by {who} after {snapshot.round} round(s).{kept}")
    elif snapshot.status == "done":
        st.success(
            f"Done: {snapshot.history[-1]['test_accuracy']:.2%} test accuracy after "
            f"{snapshot.round} rounds in {format_duration(snapshot.elapsed)}."
        )


def show_results(job: TrainingJob, snapshot: JobSnapshot) -> None:
    """The owner's downloads, and the model handed to the encrypted pages (the last finished round's)."""
    if not snapshot.history:
        return
    d1, d2, d3 = st.columns(3)
    d1.download_button("Metrics (CSV)", views.metrics_csv(snapshot.history), "federated_metrics.csv", "text/csv")
    d2.download_button("Run (JSON)", views.metrics_json(job, snapshot), "federated_run.json", "application/json")
    if job.model is not None:
        keep_trained_model(job, snapshot)
        d3.download_button(
            f"Model of round {snapshot.round} (.pt)", views.model_bytes(job, snapshot), "global_model.pt"
        )
        st.info(
            f"The global model of round {snapshot.round} is kept for this session: try it on the **Draw** and "
            "**Encrypted Test** pages."
        )


def live_view(poll: bool) -> None:
    @st.fragment(run_every=1.0 if poll else None)
    def rounds() -> None:
        job = current_job()
        if job is None:
            st.info("Choose the settings above and press **Start** to train.")
            return
        mine = owns(job)
        snapshot = job.snapshot()
        if poll and snapshot.finished:
            st.rerun()  # one full rerun ends the polling and shows the downloads
        show_progress(snapshot, mine)
        engine_views.datasite_panels(job, read_only=not mine)  # the Approve buttons are the owner's
        if snapshot.history:
            show_rounds(job, snapshot)
        if snapshot.finished and mine:
            show_results(job, snapshot)
            privacy_views.remember_run(job.job_id, job.config, snapshot.history, snapshot.status)
        runs = privacy_views.runs_table()
        if runs is not None:
            st.subheader("Your runs: what each privacy setting cost")
            st.dataframe(runs, width="stretch", hide_index=True)

    rounds()


def show_rounds(job: TrainingJob, snapshot: JobSnapshot) -> None:
    accuracy, contributions, heatmap, table = views.round_views(job, snapshot)
    epsilon = privacy_views.epsilon_text(snapshot.history, job.config)
    if epsilon:
        st.markdown(f"**{epsilon}**")
    st.plotly_chart(accuracy, width="stretch", config=CHART_CONFIG)
    if not publishes_workers(job.config):  # client-level DP: its epsilon needs the participants kept secret
        st.info(privacy_views.CLIENT_DP_HIDDEN)
        return
    left, right = st.columns([3, 2])
    if job.config.secure_aggregation:
        left.info(
            "Each worker's contribution needs its own update, which secure aggregation keeps from the server: "
            "only the sum of the round's updates is known."
        )
    else:
        left.plotly_chart(contributions, width="stretch", config=CHART_CONFIG)
        left.caption(
            "Leave-one-out: the test-accuracy points (on 1,000 fixed test images) the round's model would lose "
            "without the worker's update. Shapley: the points the worker adds on average over every order in which "
            "the round's workers could have joined; the round's values add up to its whole gain."
        )
    right.plotly_chart(heatmap, width="stretch", config=CHART_CONFIG)
    show_workers(job, snapshot, table)
    if snapshot.server_view is not None:
        with st.expander(f"What the server sees of worker W{snapshot.server_view.worker}"):
            figure = privacy_views.server_view_figure(snapshot.server_view, job.config.model)
            st.plotly_chart(figure, width="stretch", config=CHART_CONFIG)


def show_workers(job: TrainingJob, snapshot: JobSnapshot, table) -> None:
    """The latest round's workers: what the server knows of each, and the means it holds of their own training."""
    latest = snapshot.history[-1]
    st.subheader(f"Workers in round {snapshot.round}")
    means = views.local_means_text(latest.get("local_means"), job.config.secure_aggregation)
    if means:
        st.markdown(means)
    if len(table.columns):
        st.dataframe(table, width="stretch")
    elif latest["workers"]:
        names = ", ".join(f"W{row['worker']}" for row in latest["workers"])
        st.markdown(f"Took part (the server knows only this of each): {names}.")
    hidden = views.hidden_columns(table)
    if hidden:
        st.caption(f"Not known to the server under this run's privacy settings: {', '.join(hidden)}.")


config = settings_form()
job = current_job()
poll = controls(config, job, settings_check(config))
with shown_safely("showing the run"):
    live_view(poll)
remember_owner()
