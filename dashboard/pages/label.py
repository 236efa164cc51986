"""Label: press the exercise being done now; the label goes to ``<prefix>/<device>/label`` (QoS 1)."""

import time

import pandas as pd
import streamlit as st

from dashboard.common import REFRESH_SECONDS, ago, choose_device, get_feed, remember_sent
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
            st.success(f"Sent **{sent[1]['label']}** for `{device}` at device time {sent[1]['t']:.2f} s "
                       f"({ago(sent[2])}); the broker acknowledged it.", icon=":material/check:")


@st.fragment(run_every=REFRESH_SECONDS)
def recent(device: str) -> None:
    view = feed.store.device(device)
    if view is None:
        return
    now = time.time()
    device_now = feed.store.device_now(device, now)
    last = view.predictions[-1] if view.predictions else None
    cols = st.columns(2)
    cols[0].metric("Predicted now", last.label if last else "—",
                   f"{last.confidence:.0%} confident" if last else None, delta_color="off", delta_arrow="off")
    truth = view.truth_at(device_now) if device_now is not None else None
    cols[1].metric("Labelled now", truth or "—")
    if not view.labels:
        st.caption("No labels received for this device yet.")
        return
    labels = sorted(view.labels, key=lambda lab: lab.start, reverse=True)[:10]
    st.markdown("**Latest labels received**")
    st.dataframe(pd.DataFrame({
        "label": [lab.label for lab in labels],
        "start": [ago(now - (device_now - lab.start), now) if device_now is not None else lab.start
                  for lab in labels],
        "end": ["—" if lab.end is None else f"{lab.end - lab.start:.1f} s later" for lab in labels],
        "received": [ago(lab.received, now) for lab in labels],
    }), hide_index=True, width="stretch")


buttons(device)
recent(device)
