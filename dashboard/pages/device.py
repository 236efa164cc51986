"""Device: live accelerometer traces, class probabilities over time, predictions beside labels, drift."""

import time

import numpy as np
import pandas as pd
import streamlit as st

from dashboard.common import (
    DRIFT_VALUE_HELP,
    REFRESH_SECONDS,
    SILENT_AFTER,
    ago,
    choose_device,
    class_scale,
    consumer_online,
    drift_value,
    feed_status,
    get_feed,
    nominal,
    number,
    prediction_shown,
    prediction_stale,
    quantitative,
    status_text,
)
from dashboard.live import DeviceView

TIME_AXIS = "device time, s (0 = latest sample)"
SHOWN_PROBABILITY = 0.05  # classes whose probability never reaches this are left out of the chart

st.title("Device")
feed = get_feed()
device = choose_device(feed, "device_page_device")

def segments(view: DeviceView, t_ref: float) -> pd.DataFrame:
    """Predicted and true labels as (row, label, start, end) bars, in seconds before t_ref."""
    rows = []
    preds = view.predictions
    if preds:
        gaps = np.diff([p.t for p in preds])
        hop = float(np.median(gaps)) if len(gaps) else 2.0
        for k, p in enumerate(preds):
            start = preds[k - 1].t if k and 0 < p.t - preds[k - 1].t <= 3 * hop else p.t - hop
            rows.append(("predicted", p.label, start - t_ref, p.t - t_ref, f"{p.confidence:.0%}"))
    labels = sorted(view.labels, key=lambda lab: lab.start)
    for k, lab in enumerate(labels):
        end = lab.end if lab.end is not None else (labels[k + 1].start if k + 1 < len(labels) else t_ref)
        rows.append(("true", lab.label, lab.start - t_ref, end - t_ref, ""))
    return pd.DataFrame(rows, columns=["row", "label", "start", "end", "confidence"])


# The charts are plain Vega-Lite specs (st.vega_lite_chart): built with Altair, each rerun (every second) spent
# most of its time in Altair's schema look-ups and validation (cProfile).
def with_drift(data: pd.DataFrame, spec: dict, view: DeviceView, t_ref: float,
               t_min: float) -> tuple[pd.DataFrame | None, dict]:
    """``(data, spec)`` with the device's drift detections since ``t_min`` as dashed red rules over the chart: a
    layer of its own data; both datasets are then named in the spec (the browser drew the chart's own data no
    more beside a named one), and the data to pass beside it is None."""
    events = [d for d in view.drift if d.t - t_ref >= t_min]
    if not events:
        return data, spec
    frame = pd.DataFrame({"t": [d.t - t_ref for d in events], "detector": [d.detector for d in events],
                          "signal": [d.signal for d in events],
                          "value": [drift_value(d.signal, d.value) for d in events]})
    layers = spec.pop("layer", None) or [{"mark": spec.pop("mark"), "encoding": spec.pop("encoding")}]
    rules = {"data": {"name": "drift"}, "mark": {"type": "rule", "color": "#d62728", "strokeDash": [4, 3],
                                                  "strokeWidth": 2},
             "encoding": {"x": quantitative("t"), "tooltip": [nominal("detector"), nominal("signal"), nominal("value"),
                                                     quantitative("t", title="t (s)", format=".1f")]}}
    return None, {**spec, "data": {"name": "chart"}, "layer": [*layers, rules],
                  "datasets": {"chart": data, "drift": frame}}


def trace_chart(view: DeviceView, t_ref: float) -> tuple[pd.DataFrame, dict]:
    t, acc = view.trace_t, view.trace_acc
    frame = pd.DataFrame({"t": np.round(t - t_ref, 3), "x": acc[:, 0], "y": acc[:, 1], "z": acc[:, 2]})
    long = frame.melt("t", var_name="axis", value_name="m/s²")
    return long, {"mark": {"type": "line", "strokeWidth": 1.2}, "height": 260, "encoding": {
        "x": quantitative("t", title=TIME_AXIS),
        "y": quantitative("m/s²", title="specific force, m/s²"),
        "color": nominal("axis", scale={"domain": ["x", "y", "z"], "range": ["#e45756", "#54a24b", "#4c78a8"]}),
    }}


def full_probabilities(view: DeviceView) -> list:
    """The predictions that carry every class's probability, of the newest one's class list (a model change can
    change it). One loaded from the consumer's event store kept only its predicted class's (``load_history``): a
    list of one class, left out. Stacked together with the live ones, the newest one's list was the only one
    drawn, and a device's history became "rest" all along while the store held rest, squat and row."""
    full = [p for p in view.predictions if len(p.classes) > 1]
    return [p for p in full if p.classes == full[-1].classes] if full else []


def probability_chart(view: DeviceView, t_ref: float) -> tuple[pd.DataFrame, dict]:
    same = full_probabilities(view)
    classes = same[-1].classes
    probs = np.stack([p.probs for p in same])  # (predictions, classes)
    shown = [c for c, top in zip(classes, probs.max(axis=0), strict=True) if top >= SHOWN_PROBABILITY]
    frame = pd.DataFrame(probs, columns=list(classes))[shown]
    frame["t"] = [p.t - t_ref for p in same]
    long = frame.melt("t", var_name="exercise", value_name="probability")
    # stacked: each window's probabilities fill the height; step-before: a value holds over its window
    return with_drift(long, {
        "mark": {"type": "area", "interpolate": "step-before", "opacity": 0.9}, "height": 260, "encoding": {
            "x": quantitative("t", title=TIME_AXIS),
            "y": quantitative("probability", stack="zero", scale={"domain": [0, 1]}, axis={"format": "%"}),
            "color": nominal("exercise", scale=class_scale(shown)),
            "order": nominal("exercise"),
            "tooltip": [nominal("exercise"),
                        quantitative("probability", format=".1%"),
                        quantitative("t", format=".1f")],
        }}, view, t_ref, float(frame["t"].min()))


def confidence_chart(view: DeviceView, t_ref: float) -> tuple[pd.DataFrame, dict]:
    """The predicted class's probability per window, coloured by that class: all the event store keeps of a
    prediction (``load_history``)."""
    bars = segments(view, t_ref)
    bars = bars[bars["row"] == "predicted"].assign(
        probability=[p.confidence for p in view.predictions])
    return with_drift(bars, {"mark": "bar", "height": 260, "encoding": {
        "x": quantitative("start", title=TIME_AXIS),
        "x2": {"field": "end"},
        "y": quantitative("probability", title="probability of the predicted class", scale={"domain": [0, 1]},
                         axis={"format": "%"}),
        "color": nominal("label", title="exercise", scale=class_scale(bars["label"])),
        "tooltip": [nominal("label"),
                    quantitative("probability", format=".1%"),
                    quantitative("end", title="t", format=".1f")],
    }}, view, t_ref, float(bars["start"].min()))


def timeline_chart(view: DeviceView, t_ref: float) -> tuple[pd.DataFrame, dict]:
    bars = segments(view, t_ref)
    return with_drift(bars, {"mark": "bar", "height": {"step": 34}, "encoding": {
        "x": quantitative("start", title=TIME_AXIS),
        "x2": {"field": "end"},
        "y": nominal("row", title=None, sort=["predicted", "true"]),
        "color": nominal("label", title="exercise", scale=class_scale(bars["label"])),
        "tooltip": [nominal("row"),
                    nominal("label"),
                    nominal("confidence"),
                    quantitative("start", format=".1f"),
                    quantitative("end", format=".1f")],
    }}, view, t_ref, float(bars["start"].min()))


@st.fragment(run_every=REFRESH_SECONDS)
def live(device: str) -> None:
    feed = get_feed()
    feed_status(feed)
    view = feed.store.device(device)
    if view is None:
        st.warning(f"No data about `{device}` any more.")
        return
    now = time.time()
    last = view.predictions[-1] if view.predictions else None
    truth = view.truth_at(view.device_time) if view.device_time is not None and view.labels else None
    stale = prediction_stale(last.received if last else None, view.hop, view.last_seen,
                             consumer_online(feed.store.consumers()), now)
    cols = st.columns(5)
    cols[0].metric("Exercise (predicted)", prediction_shown(last.label if last else None, stale),
                   f"{last.confidence:.0%} confident · {ago(last.received, now)}" if last else None,
                   delta_color="off", delta_arrow="off", help="the latest prediction, and when it came")
    cols[1].metric("True label", truth or "—", help="latest label received for this device, if any")
    cols[2].metric("Status", status_text(view.status, view.last_seen, now, SILENT_AFTER))
    cols[3].metric("Last seen", ago(view.last_seen, now))
    cols[4].metric("Latency", number(last.latency_ms if last else None, "{:,.1f}", "ms"),
                   f"model {last.model}" if last and last.model else None, delta_color="off",
                   delta_arrow="off")
    if stale:
        st.warning(stale, icon=":material/update_disabled:")
    if view.device_time is None:
        st.info("Waiting for samples or predictions from this device.", icon=":material/hourglass_empty:")
        return
    t_ref = view.device_time

    st.subheader("Accelerometer, last 10 s")
    if len(view.trace_t):
        st.vega_lite_chart(*trace_chart(view, t_ref), width="stretch")
    else:
        st.info(f"Waiting for raw samples on `{feed.prefix}/{device}/imu`.",
                icon=":material/hourglass_empty:")

    st.subheader("Class probabilities")
    full = full_probabilities(view)
    if full:
        st.vega_lite_chart(*probability_chart(view, t_ref), width="stretch")
        earlier = len(view.predictions) - len(full)
        st.caption("Stacked per window, which ends at each step. Dashed red lines: drift detections. Classes "
                   f"that never reach {SHOWN_PROBABILITY:.0%} are left out."
                   + (f" {earlier:,} earlier predictions are left out: from the consumer's event store, which "
                      "keeps only the predicted class's probability, or of another model's classes." if earlier
                      else ""))
    elif view.predictions:
        st.vega_lite_chart(*confidence_chart(view, t_ref), width="stretch")
        st.caption("From the consumer's event store, which keeps only the predicted class's probability: each "
                   "bar is one window's predicted class and how probable the model found it. Dashed red lines: "
                   "drift detections. Every class's probability comes with live predictions.")
    else:
        st.info(f"Waiting for predictions on `{feed.prefix}/{device}/prediction` (one per window).",
                icon=":material/hourglass_empty:")

    st.subheader("Predictions beside labels")
    if view.predictions or view.labels:
        st.vega_lite_chart(*timeline_chart(view, t_ref), width="stretch")
        if not view.labels:
            st.caption("No true labels for this device yet: press the exercise on the **Label** page.")
    if view.predictions:
        recent = view.predictions[-12:][::-1]
        hop = float(np.median(np.diff([p.t for p in view.predictions]))) if len(view.predictions) > 1 else 0.0
        truths = [view.truth_at(p.t - hop / 2) for p in recent]
        st.dataframe(pd.DataFrame({
            "t (s)": [round(p.t - t_ref, 1) for p in recent],
            "predicted": [p.label for p in recent],
            "confidence": [p.confidence for p in recent],
            "true label": [tr or "—" for tr in truths],
            "match": ["" if tr is None else ("✓" if tr == p.label else "✗")
                      for p, tr in zip(recent, truths, strict=True)],
            "latency (ms)": [p.latency_ms for p in recent],
        }), hide_index=True, width="stretch", column_config={
            "confidence": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent")})
        st.caption("True label taken at the middle of each window (windows assumed as long as the spacing "
                   "between predictions).")
    if view.drift:
        st.subheader("Drift detections")
        st.dataframe(pd.DataFrame({
            "t (s)": [round(d.t - t_ref, 1) for d in view.drift[::-1]],
            "detector": [d.detector for d in view.drift[::-1]],
            "signal": [d.signal for d in view.drift[::-1]],
            "value": [drift_value(d.signal, d.value) for d in view.drift[::-1]],
            "without labels": ["✓" if d.needs_labels else "" for d in view.drift[::-1]],
            "received": [ago(d.received, now) for d in view.drift[::-1]],
        }), hide_index=True, width="stretch", column_config={
            "value": st.column_config.TextColumn("value", help=DRIFT_VALUE_HELP)})


live(device)
