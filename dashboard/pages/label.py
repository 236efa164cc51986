"""Label: press the exercise being done now; the label goes to ``<prefix>/<device>/label`` (QoS 1)."""

import time

import pandas as pd
import streamlit as st

from dashboard.common import (
    REFRESH_SECONDS,
    ago,
    choose_device,
    consumer_online,
    device_clock,
    get_feed,
    prediction_shown,
    prediction_stale,
    remember_sent,
)
from models.labels import SIMULATED

COLUMNS = 4

st.title("Label")
st.caption("Pick a device and press the exercise being done right now. The label holds until the next one; "
           "the consumer uses it to score and fine-tune the model.")
feed = get_feed()
device = choose_device(feed, "label_device")


def send(device: str, name: str) -> None:
    remember_sent("label_sent", device, lambda: feed.publish_label(device, name))


@st.fragment
def buttons(device: str) -> None:
    store = feed.store
    classes = store.classes(device)
    if not classes:
        st.caption("No prediction from this model yet: showing the simulator's exercises.")
        classes = SIMULATED
    view = store.device(device)
    latest = max(view.labels, key=lambda lab: lab.start) if view and view.labels else None
    current = latest.label if latest else None
    sent = st.session_state.get("label_sent")
    if sent and sent[0] == device and sent[1] and (latest is None or sent[1]["t"] >= latest.start):
        current = sent[1]["label"]  # its echo from the broker may still be on its way
    for row in range(0, len(classes), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, name in zip(cols, classes[row:row + COLUMNS], strict=False):
            col.button(name.replace("_", " "), key=f"label-{name}", width="stretch",
                       type="primary" if name == current else "secondary", on_click=send, args=(device, name),
                       help=f"publish {{\"label\": \"{name}\", \"t\": …}} for {device}")
    if sent and sent[0] == device:
        if sent[1] is None:
            st.error(f"Label not sent: {sent[2]}")
        else:
            # no "(0 s ago)": this fragment reruns only when a button is pressed (the table below says when)
            st.success(f"Sent **{sent[1]['label']}** for `{device}`, holding from {device_clock(sent[1]['t'])}; "
                       "the broker acknowledged it.", icon=":material/check:")


def replaced_by(labels: list, sent: tuple | None, device: str) -> tuple[str, float, str] | None:
    """``(label sent, seconds after, label)`` when the label this session sent to ``device`` was followed by
    another one, received after it was sent, that names another exercise: the demo's simulator publishes its
    own, and replaced the user's 17 s later without a word. None otherwise."""
    if not sent or sent[0] != device or not sent[1]:
        return None
    after = [lab for lab in labels if lab.start > sent[1]["t"] and lab.received >= sent[2]]
    if not after:
        return None
    first = min(after, key=lambda lab: lab.start)
    if first.label == sent[1]["label"]:
        return None
    return sent[1]["label"], first.start - sent[1]["t"], first.label


@st.fragment(run_every=REFRESH_SECONDS)
def recent(device: str) -> None:
    view = feed.store.device(device)
    if view is None:
        return
    now = time.time()
    device_now = feed.store.device_now(device, now)
    last = view.predictions[-1] if view.predictions else None
    stale = prediction_stale(last.received if last else None, view.hop, view.last_seen,
                             consumer_online(feed.store.consumers()), now)
    cols = st.columns(2)
    cols[0].metric("Predicted now", prediction_shown(last.label if last else None, stale),
                   f"{last.confidence:.0%} confident · {ago(last.received, now)}" if last else None,
                   delta_color="off", delta_arrow="off", help="the latest prediction, and when it came")
    truth = view.truth_at(device_now) if device_now is not None else None
    cols[1].metric("Labelled now", truth or "—")
    if stale:
        st.warning(stale, icon=":material/update_disabled:")
    replaced = replaced_by(view.labels, st.session_state.get("label_sent"), device)
    if replaced is not None:
        st.caption(f"**{replaced[0]}**, sent from here, was followed {replaced[1]:.0f} s later by **{replaced[2]}** "
                   "from elsewhere: this device's simulator or app publishes labels too, and each label holds "
                   "until the next.")
    if not view.labels:
        st.caption("No labels received for this device yet.")
        return
    labels = sorted(view.labels, key=lambda lab: lab.start, reverse=True)[:10]
    st.markdown("**Latest labels received**")
    st.dataframe(pd.DataFrame({
        "label": [lab.label for lab in labels],
        "start": [ago(now - (device_now - lab.start), now) if device_now is not None else lab.start
                  for lab in labels],
        "held": held_for(labels),
        "received": [ago(lab.received, now) for lab in labels],
    }), hide_index=True, width="stretch", column_config={
        "start": st.column_config.TextColumn("start", help="when it began, by the device's clock"),
        "held": st.column_config.TextColumn(
            "held", help="how long it held: a label pressed here holds until the next one; one sent with an "
                         "end (a span) holds until then")})


def held_for(labels: list) -> list[str]:
    """How long each label (newest first) held: a span, its own length; one that holds until the next, until the
    next one began (the newest: "now"). The Label page had an "end" column, always "—" for the labels it sends."""
    out = []
    for k, lab in enumerate(labels):
        if lab.end is not None:
            out.append(f"{lab.end - lab.start:,.1f} s (span)")
        elif k == 0:
            out.append("holds now")
        else:
            later = [other.start for other in labels[:k] if other.end is None and other.start > lab.start]
            out.append(f"{min(later) - lab.start:,.1f} s" if later else "holds now")
    return out


buttons(device)
recent(device)
