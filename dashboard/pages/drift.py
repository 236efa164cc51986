"""Drift and metrics: detections over time; online accuracy, kappa, per-class recall, confusion matrix."""

import time

import pandas as pd
import streamlit as st

from dashboard.common import (
    REFRESH_SECONDS,
    ago,
    drift_value,
    feed_status,
    get_feed,
    nominal,
    number,
    plural,
    quantitative,
)
from dashboard.live import ALL_DEVICES, ConsumerView

st.title("Drift and metrics")


def detections(feed, now: float) -> None:
    st.subheader("Drift detections")
    events = feed.store.drift()
    if not events:
        st.info(f"No drift detections yet. The consumer publishes one on `{feed.prefix}/<device>/drift` "
                "(detector, watched signal, value) whenever a detector fires.",
                icon=":material/hourglass_empty:")
        return
    frame = pd.DataFrame({
        "minutes ago": [(now - d.received) / 60 for _, d in events],
        "device": [device for device, _ in events],
        "detector": [d.detector for _, d in events],
        "signal": [d.signal for _, d in events],
        "value": [drift_value(d.signal, d.value) for _, d in events],
        "needs labels": [d.needs_labels for _, d in events],
    })
    frame["series"] = frame["detector"] + " · " + frame["signal"]
    st.vega_lite_chart(frame, {
        "mark": {"type": "tick", "thickness": 2, "size": 18},
        "height": {"step": 34},  # discrete rows: a fixed height would shrink them behind the axes
        "encoding": {
            "x": {"field": "minutes ago", "type": "quantitative", "scale": {"reverse": True},
                  "title": "minutes ago (arrival)"},
            "y": {"field": "series", "type": "nominal", "title": "detector · signal", "axis": {"labelLimit": 260}},
            "color": nominal("series", legend=None),
            "tooltip": [*(nominal(f) for f in ("device", "detector", "signal", "value", "needs labels")),
                        quantitative("minutes ago", format=".1f")],
        },
    }, width="stretch")
    table = frame.groupby(["detector", "signal"]).agg(
        detections=("device", "size"), devices=("device", "nunique"), latest=("minutes ago", "min"),
        **{"without labels": ("needs labels", "sum")},
    ).reset_index()
    table["latest"] = [ago(now - m * 60, now) for m in table["latest"]]
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption(f"{plural(len(events), 'detection')} kept (the latest {feed.store.max_drift} per device). "
               "A detection's *value* (in the chart's tooltip) is what its signal measured when it fired: "
               "orientation, an angle in degrees; input magnitude, m/s²; confidence and error, a share. "
               "*Without labels*: seen where no labels arrive, so only a change of inputs or confidence is "
               "known; label a few exercises on the **Label** page to learn whether accuracy suffers. "
               f"*{ALL_DEVICES}*: the consumer's detectors that watch all devices together.")


# The charts are plain Vega-Lite specs: built with Altair, each rerun (every second) spent most of its time in
# Altair's schema look-ups and validation (four charts: about 170 ms of the 250 ms of a rerun, cProfile).
def history_chart(view: ConsumerView, now: float) -> tuple[pd.DataFrame, dict] | None:
    rows = []
    for received, metrics in view.history:
        online = metrics.get("online") or {}
        for key, name in (("accuracy", "cumulative accuracy"), ("rolling_accuracy", "rolling accuracy"),
                          ("estimated_accuracy", "estimated accuracy (label-free)"), ("kappa", "kappa")):
            value = online.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(((now - received) / 60, name, value))
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=["minutes ago", "metric", "value"])
    return frame, {
        "mark": {"type": "line", "point": {"size": 14}},
        "height": 240,
        "encoding": {
            "x": {"field": "minutes ago", "type": "quantitative", "scale": {"reverse": True}},
            "y": {"field": "value", "type": "quantitative",
                  "scale": {"domain": [min(0.0, float(frame["value"].min())), 1]}},
            "color": {"field": "metric", "type": "nominal", "legend": {"orient": "bottom", "labelLimit": 320}},
            "tooltip": [nominal("metric"), quantitative("value", format=".3f"),
                        quantitative("minutes ago", format=".1f")],
        },
    }


def confusion_chart(confusion: dict) -> tuple[pd.DataFrame, dict] | None:
    labels, matrix = confusion.get("labels"), confusion.get("matrix")
    if not labels or not isinstance(matrix, list) or len(matrix) != len(labels):
        return None
    rows = [(true, pred, count, count / max(1, sum(row)))
            for true, row in zip(labels, matrix, strict=True)
            for pred, count in zip(labels, row, strict=False)]
    frame = pd.DataFrame(rows, columns=["true", "predicted", "windows", "share of row"])
    axes = {"x": nominal("predicted", sort=list(labels)),
            "y": nominal("true", sort=list(labels))}
    return frame, {
        "width": {"step": 40}, "height": {"step": 28},
        "layer": [
            {"mark": "rect", "encoding": {
                **axes,
                "color": {"field": "share of row", "type": "quantitative",
                          "scale": {"scheme": "blues", "domain": [0, 1]}, "legend": None},
                "tooltip": [nominal("true"), nominal("predicted"), quantitative("windows"),
                            quantitative("share of row", format=".1%")]}},
            {"mark": {"type": "text", "fontSize": 11}, "encoding": {
                **axes,
                "text": {"condition": {"test": "datum.windows > 0", "field": "windows", "type": "quantitative"},
                         "value": ""},
                "color": {"condition": {"test": "datum['share of row'] > 0.5", "value": "white"},
                          "value": "#333"}}},
        ],
    }


def online_metrics(view: ConsumerView, now: float) -> None:
    online = (view.metrics or {}).get("online")
    with st.container(border=True):
        state = " · offline" if view.status == "offline" else ""
        st.markdown(f"Consumer `{view.consumer}`{state} · metrics {ago(view.metrics_time, now)}")
        if not isinstance(online, dict) or not online:
            st.info("No online metrics from this consumer yet. They appear once it scores its predictions "
                    "against true labels (press exercises on the **Label** page, or run the simulator with "
                    "`--labels`).", icon=":material/hourglass_empty:")
            return
        labelled = online.get("labelled_windows")
        cols = st.columns(4)
        cols[0].metric("Cumulative accuracy", number(online.get("accuracy"), "{:.1%}"),
                       f"{labelled:,} labelled windows" if isinstance(labelled, int) else None,
                       delta_color="off", delta_arrow="off",
                       help="each labelled window scored before the model learns from it (prequential)")
        cols[1].metric("Rolling accuracy", number(online.get("rolling_accuracy"), "{:.1%}"))
        cols[2].metric("Cohen's kappa", number(online.get("kappa"), "{:.3f}"))
        cols[3].metric("Estimated accuracy", number(online.get("estimated_accuracy"), "{:.1%}"),
                       help="label-free estimate from the model's own confidence; needs no labels")
        if online.get("needs_labels"):
            named = [str(d) for d in online.get("needing_labels") or []]
            count = online.get("devices_needing_labels")
            which = ""
            if named:
                which = " (" + ", ".join(f"`{d}`" for d in named)
                which += f" and {count - len(named)} more)" if isinstance(count, int) and count > len(named) else ")"
            st.warning(f"Drift was detected where no labels arrive{which}: label a few exercises on the "
                       "**Label** page so that the consumer can tell whether its accuracy suffers.",
                       icon=":material/label:")
        chart = history_chart(view, now)
        if chart is not None:
            st.vega_lite_chart(*chart, width="stretch")
        left, right = st.columns(2)
        recall = online.get("per_class_recall") or {}
        with left:
            st.markdown("**Per-class recall**")
            values = {k: v for k, v in recall.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if values:
                frame = pd.DataFrame({"exercise": list(values), "recall": list(values.values())})
                st.vega_lite_chart(frame, {
                    "mark": "bar", "height": {"step": 24},
                    "encoding": {
                        "x": {"field": "recall", "type": "quantitative", "scale": {"domain": [0, 1]},
                              "axis": {"format": "%"}},
                        "y": nominal("exercise", sort="-x", title=None),
                        "tooltip": [nominal("exercise"),
                                    quantitative("recall", format=".1%")],
                    },
                }, width="stretch")
            else:
                st.caption("No per-class recall yet.")
        with right:
            st.markdown("**Confusion matrix** (rows true, columns predicted; windows)")
            chart = confusion_chart(online.get("confusion") or {})
            if chart is not None:
                st.vega_lite_chart(*chart)
            else:
                st.caption("No confusion matrix yet.")


@st.fragment(run_every=REFRESH_SECONDS)
def live() -> None:
    feed = get_feed()
    feed_status(feed)
    now = time.time()
    detections(feed, now)
    st.subheader("Online metrics")
    consumers = feed.store.consumers()
    if not consumers:
        st.info(f"Waiting for a consumer: none has published on `{feed.prefix}/_consumer/+/metrics` yet.",
                icon=":material/hourglass_empty:")
    # the online consumers; when none is, the one heard from last (its retained metrics)
    shown = [v for v in consumers if v.status != "offline"] or sorted(
        consumers, key=lambda v: v.metrics_time or 0.0)[-1:]
    for view in shown:
        online_metrics(view, now)


live()
