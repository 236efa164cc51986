"""Overview: the devices heard from most recently with their current exercise, and the health of every
consumer."""

import time
from urllib.parse import quote

import pandas as pd
import streamlit as st

from dashboard.common import (
    REFRESH_SECONDS,
    SILENT_AFTER,
    ago,
    consumer_online,
    feed_status,
    get_feed,
    number,
    plural,
    status_text,
    why_stale,
)
from dashboard.live import ConsumerView

STALE_AFTER = 30.0  # s without a metrics message before a consumer's numbers are marked stale
ACTIVE_WITHIN = 10.0  # s: a device seen this recently is "streaming"
MAX_ROWS = 200  # devices in the table: the most recently heard from (the filter finds the others)

st.title("Overview")
query = st.text_input("Filter devices", placeholder="part of a device id, e.g. sim-00", key="device_filter")


def trend(view: ConsumerView, pick, points: int = 60) -> list[float] | None:
    """The last ``points`` values of one metric, for a sparkline; None below two values."""
    values = []
    for _, metrics in view.history[-points:]:
        value = pick(metrics)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
    return values if len(values) > 1 else None


def consumer_panel(view: ConsumerView, now: float) -> None:
    m = view.metrics or {}
    age = now - view.metrics_time if view.metrics_time else None
    stale = age is not None and age > STALE_AFTER
    title = f"Consumer `{view.consumer}` · {status_text(view.status)}"
    if m.get("model"):
        title += f" · model `{m['model']}`"
    with st.container(border=True):
        st.markdown(title)
        if not view.metrics:
            st.caption("No metrics received yet (the consumer publishes them every few seconds).")
            return
        lat = m.get("latency_ms") or {}
        rejected = m.get("rejected") or {}
        cols = st.columns(7)
        cols[0].metric("Samples / s", number(m.get("samples_per_s"), "{:,.0f}"),
                       chart_data=trend(view, lambda h: h.get("samples_per_s")), chart_type="area")
        cols[1].metric("Windows / s", number(m.get("windows_per_s"), "{:,.1f}"),
                       chart_data=trend(view, lambda h: h.get("windows_per_s")), chart_type="area")
        cols[2].metric("Devices", number(m.get("devices"), "{:,.0f}"))
        cols[3].metric("Latency p50", number(lat.get("p50"), "{:,.1f}", "ms"),
                       chart_data=trend(view, lambda h: (h.get("latency_ms") or {}).get("p50")))
        cols[4].metric("Latency p99", number(lat.get("p99"), "{:,.1f}", "ms"),
                       chart_data=trend(view, lambda h: (h.get("latency_ms") or {}).get("p99")),
                       help=f"p95 {number(lat.get('p95'), '{:,.1f}', 'ms')}, "
                            f"max {number(lat.get('max'), '{:,.1f}', 'ms')}")
        cols[5].metric("Rejected", number(sum(rejected.values()), "{:,.0f}"),
                       help=", ".join(f"{k}: {v}" for k, v in sorted(rejected.items())) or "none")
        cols[6].metric("Lost samples", number(m.get("lost_samples"), "{:,.0f}"),
                       help="estimated from gaps in sequence numbers")
        st.caption(
            f"{number(m.get('messages'), '{:,.0f}')} messages, {number(m.get('windows'), '{:,.0f}')} windows "
            f"classified · {number(m.get('late_samples'), '{:,.0f}')} late samples · "
            f"{number(m.get('dropped'), '{:,.0f}')} dropped (queue full) · "
            f"queue {number(m.get('queue'), '{:,.0f}')}"
            f" · metrics {ago(view.metrics_time, now)}"
            + (" — **stale**: no metrics for a while; the consumer may be stuck or gone" if stale else "")
        )
        for now_failing, problem in health_problems(m):
            (st.warning if now_failing else st.caption)(problem)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def health_problems(m: dict) -> list[tuple[bool, str]]:
    """What the consumer's metrics say has failed and may need an operator (a full disk, a shared store gone),
    each as one sentence, with whether it is failing now (else it failed since the consumer started); the
    consumer goes on serving through all of them, and its log says more."""
    out = []
    store, journal = m.get("store"), m.get("journal")
    learner, shared = m.get("learner"), m.get("shared")
    if isinstance(store, dict) and store.get("failing") is True:
        out.append((True, f"The event store cannot write ({_count(store.get('errors')):,} failed writes; "
                           f"{_count(store.get('pending')):,} events wait in memory): is the disk under --state-dir "
                           "full?"))
    if isinstance(journal, dict) and journal.get("failing") is True:
        out.append((True, f"The acknowledgement journal cannot write ({_count(journal.get('errors')):,} failed "
                           f"writes): {_count(journal.get('held')):,} windows' messages stay unacknowledged with the "
                           "broker until it can. Is the disk under --state-dir full?"))
    if isinstance(learner, dict) and _count(learner.get("save_failures")):
        out.append((False, f"{_count(learner['save_failures']):,} model versions could not be saved since the "
                    "consumer started (not served; tried again at the next promotion): a full disk? "
                    "--keep-versions bounds the versions kept."))
    if isinstance(shared, dict) and isinstance(shared.get("store_down_s"), int | float) \
            and not isinstance(shared.get("store_down_s"), bool) and shared["store_down_s"] > 0:
        out.append((True, f"The shared state store has not answered for {shared['store_down_s']:,.0f} s: this "
                           f"replica holds {_count(shared.get('held')):,} messages until it does."))
    return out


@st.fragment(run_every=REFRESH_SECONDS)
def live() -> None:
    feed = get_feed()
    feed_status(feed)
    store = feed.store
    now = time.time()

    st.subheader("Consumers")
    consumers = store.consumers()
    if not consumers:
        st.info(f"Waiting for a consumer: none has published on `{feed.prefix}/_consumer/+/status` yet. "
                "Start one with `harstream consume`.", icon=":material/hourglass_empty:")
    offline = [v for v in consumers if v.status == "offline"]
    for view in consumers:
        if view.status != "offline":
            consumer_panel(view, now)
    if offline:
        if len(offline) == len(consumers):
            st.warning("No consumer is online: nothing classifies the devices' samples now; the exercises "
                       "below are the last ones predicted (their age: *predicted*).", icon=":material/warning:")
        with st.expander(f"{plural(len(offline), 'offline consumer')} (retained status)"):
            for view in offline:
                model = (view.metrics or {}).get("model")
                st.markdown(f"`{view.consumer}` · last metrics {ago(view.metrics_time, now)}"
                            + (f" · model `{model}`" if model else ""))

    st.subheader("Devices")
    needle = (st.session_state.get("device_filter") or "").strip().lower()
    seen = store.overview(now, limit=MAX_ROWS, contains=needle, heard_within=SILENT_AFTER,
                          active_within=ACTIVE_WITHIN)
    if not seen.total:
        st.info(f"Waiting for devices: nothing received on `{feed.prefix}/+/imu`, `prediction` or `status` "
                "yet.", icon=":material/hourglass_empty:")
        return
    rows = seen.rows
    online = consumer_online(consumers)
    stale = [why_stale(r.predicted_at, r.hop, r.last_seen, online, now) for r in rows]
    unclassified = stale.count("unclassified")
    cols = st.columns(4)
    cols[0].metric("Devices", f"{seen.total:,}",
                   help=f"heard from in the last {store.forget_after / 60:.0f} min (silent longer: forgotten)")
    cols[1].metric("Online (status, heard from)", f"{seen.online:,}")
    cols[2].metric(f"Seen in the last {ACTIVE_WITHIN:.0f} s", f"{seen.streaming:,}")
    cols[3].metric(f"With drift in the last {store.drift_recent_seconds / 60:.0f} min", f"{seen.drifting:,}")
    frame = pd.DataFrame({
        "device": [f"device?device={quote(r.device)}" for r in rows],
        "status": [status_text(r.status, r.last_seen, now, SILENT_AFTER) for r in rows],
        "exercise": [f"{r.label} (not current)" if old and r.label else (r.label or "—")
                     for r, old in zip(rows, stale, strict=True)],
        "confidence": [r.confidence for r in rows],
        "true label": [r.truth or "—" for r in rows],
        "drift": [f"⚠ {r.drift_recent}" if r.drift_recent else "" for r in rows],
        "last drift": [r.last_drift or "" for r in rows],
        "predicted": [ago(r.predicted_at, now) for r in rows],
        "last seen": [ago(r.last_seen, now) for r in rows],
        "model": [r.model or "—" for r in rows],
    })
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        height=min(38 + 35 * len(frame), 640),
        column_config={
            "device": st.column_config.LinkColumn("device", display_text=r"device\?device=(.*)$",
                                                  help="opens the device's page"),
            "exercise": st.column_config.TextColumn(
                "exercise", help="latest prediction; “not current” when it is older than a few windows, or no "
                                 "consumer is online"),
            "predicted": st.column_config.TextColumn("predicted", help="when the latest prediction came"),
            "last seen": st.column_config.TextColumn("last seen", help="the latest message from or about the "
                                                                       "device (its samples too)"),
            "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0,
                                                          format="percent"),
            "true label": st.column_config.TextColumn("true label", help="latest label received, if any"),
            "drift": st.column_config.TextColumn(
                "drift", help=f"detections in the last {store.drift_recent_seconds / 60:.0f} minutes"),
        },
    )
    if unclassified:
        st.warning(f"{plural(unclassified, 'device')} shown {'has' if unclassified == 1 else 'have'} had no "
                   f"prediction for more than a few windows although {'its' if unclassified == 1 else 'their'} "
                   "samples still come (“not current”): a consumer is online, but none classifies them (one "
                   "stuck, or serving other devices).", icon=":material/update_disabled:")
    if needle and not rows:
        st.caption(f"No device id contains “{needle}”.")
    elif seen.matching > len(rows):
        st.caption(f"The {len(rows):,} devices heard from most recently are shown, of {seen.matching:,}"
                   + (f" whose id contains “{needle}”" if needle else "")
                   + f": {seen.matching - len(rows):,} more; the filter above finds them.")


live()

with st.expander("What this dashboard receives"):
    @st.fragment(run_every=REFRESH_SECONDS * 5)
    def feed_counters() -> None:
        counters = get_feed().store.counters()
        st.write({k: counters[k] for k in ("received", "malformed", "dropped")})
        st.caption(f"{counters['devices']:,} devices and {counters['consumers']:,} consumers tracked; "
                   f"{counters['trace_samples']:,} raw samples kept for the live traces.")

    feed_counters()
