"""Train: watch a federation of workers learn MNIST, round by round."""

import streamlit as st

from fed_core.config import BASICS, MORE, TrainConfig, estimate_seconds, problems
from fed_core.data.mnist import MnistFileError, load_mnist
from fed_core.engines import engine_for
from fed_core.job import BUSY, OWNER_BUSY, JobSnapshot, TrainingJob
from fed_core.limits.budget import budget_problems, estimate_run_bytes, load_budget
from fed_core.privacy.policy import privacy_for
from ui import engine_views, privacy_views, session
from ui import train_views as views
from ui.common import CHART_CONFIG, format_duration, shown_safely
from ui.nav import in_frame
from ui.runs import current_job, ensure_owner_token, job_slots, keep_trained_model, owns, remember_owner
from ui.settings_form import settings_group

in_frame()
st.title("Federated training, live")
st.caption(
    "The server sends the global model to a random sample of workers; each trains on its own "
    "private digits and sends back only its update; the server averages the updates, weighted by "
    "how many examples each worker has."
)


def settings_form() -> TrainConfig:
    """The settings as their declarations draw them (ui/settings_form.py); the engine and privacy views add theirs."""
    values = settings_group(TrainConfig, BASICS, st.columns(4))
    values["engine"], values["manual_approval"] = engine_views.engine_settings(st.columns(2)[0])
    values.update(privacy_views.privacy_settings(values["engine"]))
    with st.expander("More settings: local training, initialisation, server optimizer and strategy, dropout"):
        values.update(settings_group(TrainConfig, MORE, st.columns(4), values))
    return TrainConfig(**values)


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
    privacy = privacy_for(job.config)
    if not privacy.publishes_workers:  # client-level DP: its epsilon needs the participants kept secret
        st.info(privacy_views.CLIENT_DP_HIDDEN)
        return
    left, right = st.columns([3, 2])
    if privacy.secure_aggregation:
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
    means = views.local_means_text(latest.get("local_means"), privacy_for(job.config).secure_aggregation)
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
