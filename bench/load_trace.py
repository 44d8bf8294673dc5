"""Where a Draw classification's time goes under load: bench/bench_load.py --trace joins the browser's click
times with the server's trace (bench/probe/sitecustomize.py) and prints one row per stage."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

PROBE_DIR = Path(__file__).resolve().parent / "probe"
STAGES = (
    ("to server", "pressed", "backmsg"),  # click in the harness -> the event loop has the rerun request
    ("queued", "backmsg", "run_start"),  # -> the session's script thread starts the run
    ("page before classify", "run_start", "classify_start"),
    ("classify", "classify_start", "classify_end"),
    ("page after classify", "classify_end", "run_end"),
    ("event loop sends end", "run_end", "finished"),  # -> the event loop queues script_finished for the browser
    ("browser shows it", "finished", "idle"),  # -> the browser's status widget goes away
    ("harness sees it", "idle", "seen"),
)


def read_trace(path: str) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        kinds.setdefault(row["kind"], []).append(row)
    return kinds


def click_marks(click: dict, scheme: str, trace: dict[str, list[dict]]) -> dict | None:
    """The click's times through the server: its rerun request, the run that classified, and the browser's."""
    pressed = click["pressed"]
    for classify in trace.get("classify", []):
        if classify["t0"] < pressed or classify["scheme"] != scheme:
            continue
        run = next(
            (r for r in trace["run"] if r["tid"] == classify["tid"] and r["t0"] <= classify["t0"] <= r["t"]), None
        )
        if run is None:
            return None
        requests = [b for b in trace["backmsg"] if b["sid"] == run["sid"] and pressed - 0.05 <= b["t"] <= run["t0"]]
        finished = [f["t"] for f in trace.get("finished", []) if f["sid"] == run["sid"] and f["t"] >= run["t"]]
        if not requests or not finished:
            return None
        return {
            **click,
            "backmsg": requests[0]["t"],
            "run_start": run["t0"],
            "classify_start": classify["t0"],
            "classify_end": classify["t"],
            "run_end": run["t"],
            "finished": finished[0],
            "run": run,
            "classify": classify,
        }
    return None


def blocked(span: dict) -> float:
    """Wall seconds of a traced span neither on a CPU nor waiting for one: waiting on the GIL (or I/O)."""
    return (span["t"] - span["t0"]) - span["cpu"] - span["rq"]


def print_breakdown(tag: str, clicks: dict[str, list[dict]], path: str) -> None:
    trace = read_trace(path)
    for scheme, rows in clicks.items():
        marks = [m for m in (click_marks(c, scheme, trace) for c in rows) if m is not None and "idle" in m]
        if not marks:
            print(f"{tag} {scheme.upper()}: no click matched the trace")
            continue
        print(f"{tag} {scheme.upper()} classification, where the time goes (median / max of {len(marks)} clicks, s):")
        for name, start, end in STAGES:
            spans = [m[end] - m[start] for m in marks]
            print(f"    {name:<22} {statistics.median(spans):6.2f} / {max(spans):6.2f}")
        for part in ("run", "classify"):
            spans = [m[part] for m in marks]
            print(
                f"    the {part + ':':<9} CPU {statistics.median(s['cpu'] for s in spans):.2f}, waiting for a core "
                f"{statistics.median(s['rq'] for s in spans):.2f}, blocked (GIL) "
                f"{statistics.median(blocked(s) for s in spans):.2f} (medians)"
            )
    ticks = trace.get("tick", [])
    if ticks:
        lags = sorted(t["lag_mean"] - t["probe_rq"] for t in ticks)
        train = [t["cpu"].get("federated-run", 0.0) for t in ticks]
        loop = [t["cpu"]["loop"] for t in ticks]
        seconds = len(ticks) * 0.5
        print(
            f"{tag} a 10 ms sleep in the server woke late by (GIL, its run-queue wait removed) median "
            f"{statistics.median(lags) * 1e3:.1f} ms, p95 {lags[int(0.95 * (len(lags) - 1))] * 1e3:.1f} ms; "
            f"CPU share over {seconds:.0f} s: training thread {sum(train) / seconds:.0%}, event loop "
            f"{sum(loop) / seconds:.0%}"
        )
