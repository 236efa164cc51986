"""Model: versions and their metrics, fine-tuning loss and gradient norms, promote and roll back."""

import time
import uuid

import pandas as pd
import streamlit as st

from dashboard.common import REFRESH_SECONDS, ago, feed_status, get_feed, nominal, number, quantitative, remember_sent
from dashboard.live import ConsumerView
from dashboard.model_view import adapters_only_note, adapts_devices_only, awaiting_answer, command_answer

STEPS = ["applied", "clipped", "skipped"]

st.title("Model")


def _scalar(value: object) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def restorable(version: dict) -> bool:
    """A version the consumer can go back to: it says where it saved it (or does not say at all)."""
    return "path" not in version or bool(version.get("path"))


# a version's metrics (models/finetune.py: the comparison that promoted it) under readable headers
VERSION_METRICS = {"windows": "labelled windows compared",
                   "challenger_accuracy": "its accuracy then",
                   "serving_accuracy": "parent's accuracy, same windows"}


def _cell(key: str, value: object) -> str:
    """A version's metric as the table shows it, as text (a column of mixed types fails Arrow, and Streamlit
    made "24.0" of 24): a share as a percent (as the page's top says them), nothing as "—" (the table said
    "None", and 0.7083 where the top said 70.8%)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and ("accuracy" in key or key.endswith("recall")):
        return f"{value:.1%}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _header(key: str) -> str:
    name = key.rsplit(".", 1)[-1]
    return VERSION_METRICS.get(name, name.replace("_", " ")) if "." not in key else \
        f"{key.split('.', 1)[0].replace('_', ' ')}: {VERSION_METRICS.get(name, name.replace('_', ' '))}"


def versions_frame(model: dict) -> pd.DataFrame:
    rows = []
    for v in model.get("versions") or []:
        if not isinstance(v, dict) or v.get("version") is None:
            continue
        row = {"version": str(v["version"]),
               "serving": "▶ serving" if str(v["version"]) == str(model.get("serving")) else "",
               "parent": v.get("parent") or "—",
               "created": v.get("created"),
               "saved": "✓" if restorable(v) else "—"}
        for key, value in (v.get("metrics") or {}).items():
            if isinstance(value, dict):  # one level of nesting, e.g. {"online": {"windows": ...}}
                row.update({_header(f"{key}.{k}"): _cell(k, x) for k, x in value.items() if _scalar(x)})
            elif _scalar(value):
                row[_header(key)] = _cell(key, value)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "created" in frame and pd.api.types.is_numeric_dtype(frame["created"]):
        # epoch seconds → readable; strings (ISO dates) are shown as they come
        created = pd.to_datetime(frame["created"], unit="s", utc=True)
        frame["created"] = created.dt.strftime("%Y-%m-%d %H:%M:%S UTC")
    # a version without a metric (the first, never compared) has nothing there, not "None"
    return frame.astype(object).where(frame.notna(), "—")


def training_charts(view: ConsumerView) -> None:
    steps = view.training
    frame = pd.DataFrame({
        "update": range(len(steps)),
        "loss": [s.loss for s in steps],
        "gradient norm": [s.grad_norm for s in steps],
        "step": ["skipped" if s.skipped else ("clipped" if s.clipped else "applied") for s in steps],
        "version": [s.version for s in steps],
    })
    clipped = sum(s.clipped for s in steps)
    skipped = sum(s.skipped for s in steps)
    cols = st.columns(4)
    cols[0].metric("Updates shown", f"{len(steps):,}", help="the latest ones received by this dashboard")
    cols[1].metric("Latest loss", number(steps[-1].loss, "{:.4f}"))
    cols[2].metric("Gradient clipped", f"{clipped:,}", f"{clipped / len(steps):.0%} of updates",
                   delta_color="off", delta_arrow="off")
    cols[3].metric("Skipped", f"{skipped:,}", f"{skipped / len(steps):.0%} of updates", delta_color="off",
                   delta_arrow="off", help="updates the learner refused, e.g. for a non-finite loss")
    left, right = st.columns(2)
    for column, field in ((left, "loss"), (right, "gradient norm")):
        with column:
            note = " (before clipping)" if field == "gradient norm" else ""
            st.markdown(f"**{field.capitalize()}**{note}")
            st.vega_lite_chart(frame.dropna(subset=[field]), training_spec(field), width="stretch")
    st.caption("Orange triangles: updates whose gradient norm was clipped; grey crosses: updates skipped.")


def training_spec(field: str) -> dict:
    """The Vega-Lite spec of one fine-tuning chart (a line through points coloured and shaped by step), as a
    plain dict: built with Altair, each rerun (every second) spent most of the page's time in Altair's schema
    look-ups and validation (two charts: about 80 ms of the 110 ms of a rerun, cProfile)."""
    x = quantitative("update", title="fine-tuning update")
    y = quantitative(field)
    return {
        "height": 240,
        "layer": [
            {"mark": {"type": "line", "color": "#bbb", "strokeWidth": 1}, "encoding": {"x": x, "y": y}},
            {"mark": {"type": "point", "filled": True, "size": 55}, "encoding": {
                "x": x, "y": y,
                "color": {"field": "step", "type": "nominal",
                          "scale": {"domain": STEPS, "range": ["#4c78a8", "#f58518", "#9d9d9d"]}},
                "shape": {"field": "step", "type": "nominal",
                          "scale": {"domain": STEPS, "range": ["circle", "triangle-up", "cross"]}},
                "tooltip": [quantitative("update"), nominal("step"),
                            nominal("version"),
                            quantitative("loss", format=".4f"),
                            quantitative("gradient norm", format=".3g")]}},
        ],
    }


def learner_summary(view: ConsumerView) -> dict:
    """Updates and the challenger's comparison, from the model message or else the metrics."""
    model = view.model or {}
    learner = (view.metrics or {}).get("learner") or {}
    comparison = model.get("comparison") or learner
    return {"updates": model.get("updates", learner.get("updates")),
            "adapter_updates": learner.get("adapter_updates"),  # per-device adapters (--adapt device, both)
            "alive": learner.get("alive"),  # the consumer's learner process (None: not reported)
            "restarts": learner.get("restarts"),  # started again after it ended unexpectedly
            "restarting": learner.get("restarting"),  # it ended and is being started again (None: not reported)
            "lost_sequences": learner.get("lost_sequences"),  # sent to a learner process that ended, unlearnt
            "dropped": learner.get("dropped"),
            "skipped": model.get("skipped", learner.get("skipped")),
            "windows": comparison.get("windows"),
            "serving_accuracy": comparison.get("serving_accuracy"),
            "challenger_accuracy": comparison.get("challenger_accuracy")}


@st.fragment(run_every=REFRESH_SECONDS)
def live(view_id: str) -> None:
    feed = get_feed()
    feed_status(feed)
    view = next((v for v in feed.store.consumers() if v.consumer == view_id), None)
    if view is None:
        st.warning(f"No data about consumer `{view_id}` any more.")
        return
    now = time.time()
    serving = (view.model or {}).get("serving") or (view.metrics or {}).get("model")
    learner = learner_summary(view)
    cols = st.columns(4)
    cols[0].metric("Serving", str(serving) if serving else "—",
                   f"{'offline · ' if view.status == 'offline' else ''}metrics {ago(view.metrics_time, now)}"
                   if view.metrics_time else None, delta_color="off", delta_arrow="off")
    windows = learner["windows"]
    cols[1].metric("Challenger accuracy", number(learner["challenger_accuracy"], "{:.1%}"),
                   f"on {windows:,} recent labelled windows" if windows else None, delta_color="off",
                   delta_arrow="off", help="the weights being fine-tuned, scored on windows before training "
                                           "on them")
    cols[2].metric("Serving accuracy", number(learner["serving_accuracy"], "{:.1%}"),
                   "same windows" if windows else None, delta_color="off", delta_arrow="off")
    notes = [f"{learner['skipped']:,} skipped"] if isinstance(learner["skipped"], int) else []
    if adapts_devices_only(view):  # no "0" of a shared network this consumer does not fine-tune
        cols[3].metric("Device-adapter updates", number(learner["adapter_updates"], "{:,.0f}"),
                       "adapters only", delta_color="off", delta_arrow="off",
                       help="--adapt device (the default): each labelling device's own adapter learns; the "
                            "shared network is not fine-tuned")
    else:
        if isinstance(learner["adapter_updates"], int):
            notes.append(f"{learner['adapter_updates']:,} device-adapter updates")
        cols[3].metric("Fine-tuning updates", number(learner["updates"], "{:,.0f}"), " · ".join(notes) or None,
                       delta_color="off", delta_arrow="off",
                       help="of the shared network (--adapt shared or both); the per-device adapters (--adapt "
                            "device, the default) learn beside it")
    restarts = learner["restarts"] if isinstance(learner["restarts"], int) else 0
    lost = learner["lost_sequences"] if isinstance(learner["lost_sequences"], int) else 0
    lost_note = (f" {lost:,} labelled sequences sent to it were lost unlearnt when it ended." if lost else "")
    if learner["alive"] is False and view.status != "offline":
        if learner["restarting"]:
            st.warning(f"This consumer's learner process ended unexpectedly and is being started again (restart "
                       f"{restarts + 1}); the labels that come meanwhile wait for it.{lost_note} Its log says why it "
                       "ended.")
        else:
            again = (f" It was started again {restarts:,} times and ended soon after each time: it is not started "
                     f"again." if restarts else "")
            st.error(f"This consumer's learner process has stopped: its labels are no longer learnt "
                     f"({learner['dropped'] or 0:,} sequences dropped).{again} "
                     "Its log says why; a restart of the consumer starts a new one.")
    elif restarts and view.status != "offline":
        st.caption(f"This consumer's learner process ended unexpectedly and was started again {restarts:,} "
                   f"times; its log says why.{lost_note}")
    if view.metrics and "learner" in view.metrics and view.metrics["learner"] is None:
        st.caption("This consumer runs without online learning: it serves one model and reports no versions.")

    st.subheader("Versions")
    if view.model and view.model.get("versions"):
        st.dataframe(versions_frame(view.model), hide_index=True, width="stretch")
    else:
        st.info(f"No model versions reported yet. The consumer publishes them (retained) on "
                f"`{feed.prefix}/_consumer/{view.consumer}/model` when online learning is on.",
                icon=":material/hourglass_empty:")
    st.subheader("Fine-tuning")
    if view.training:
        training_charts(view)
    else:
        st.info("No fine-tuning updates yet: one arrives on "
                f"`{feed.prefix}/_consumer/{view.consumer}/training` per update, once labels come in.",
                icon=":material/hourglass_empty:")


def send(view_id: str, action: str, version: str | None) -> None:
    # an id of its own: the consumer's model message answering it names it (``answers``)
    remember_sent("command_sent", view_id,
                  lambda: get_feed().send_command(view_id, action, version, command_id=uuid.uuid4().hex[:16]))


@st.fragment
def commands(view_id: str) -> None:
    view = consumer_view(view_id)
    model = (view.model or {}) if view else {}
    versions = [v for v in model.get("versions") or []
                if isinstance(v, dict) and v.get("version") is not None]
    earlier = [str(v["version"]) for v in versions
               if str(v["version"]) != str(model.get("serving")) and restorable(v)][::-1]
    adapters_only = adapts_devices_only(view)
    st.subheader("Promote or roll back")
    if adapters_only:
        st.info(adapters_only_note(), icon="ℹ️")
    left, right = st.columns(2)
    with left:
        st.markdown("**Promote the challenger now**")
        st.caption("Serve the weights being fine-tuned now, without waiting for them to do at least as well "
                   "as the serving ones on recent labelled windows.")
        st.button("Promote", icon=":material/upgrade:", type="primary", key=f"promote-{view_id}",
                  disabled=not versions or adapters_only, on_click=send, args=(view_id, "promote", None))
    with right:
        st.markdown("**Roll back**")
        st.caption("Serve an earlier version again (one the consumer saved), and fine-tune from it.")
        version = st.selectbox("Version", earlier, key=f"version-{view_id}", disabled=not earlier,
                               label_visibility="collapsed", placeholder="no earlier version saved")
        st.button("Roll back to it", icon=":material/undo:", key=f"rollback-{view_id}", disabled=not earlier,
                  on_click=send, args=(view_id, "rollback", version))
    if not versions:
        st.caption("Enabled once the consumer reports its model versions.")
        if st.button("Check again", icon=":material/refresh:", key=f"refresh-{view_id}"):
            st.rerun(scope="fragment")
    # the command's status reruns on its own; it reruns the page once the answer it waited for has come
    st.session_state["command_awaited"] = awaiting_answer(view, st.session_state.get("command_sent"))
    command_status(view_id)


def consumer_view(view_id: str) -> ConsumerView | None:
    return next((v for v in get_feed().store.consumers() if v.consumer == view_id), None)


@st.fragment(run_every=REFRESH_SECONDS)
def command_status(view_id: str) -> None:
    """What came of the command sent to ``view_id``, and the commands seen on the broker, anew every
    REFRESH_SECONDS: in the fragment of the buttons, which reruns only when one is pressed, it said "sent …
    (0 s ago)" until the next press although the consumer had answered a second later. When the answer the page
    waited for comes, the whole page reruns: the versions to roll back to are the consumer's new ones."""
    feed = get_feed()
    view = consumer_view(view_id)
    sent = st.session_state.get("command_sent")
    if st.session_state.get("command_awaited") and not awaiting_answer(view, sent):
        st.session_state["command_awaited"] = False
        st.rerun()
    if sent and sent[0] == view_id:
        said = command_answer(view, sent)
        if sent[1] is None:
            st.error(f"Command not sent: {sent[2]}")
        elif said is not None and isinstance(said.get("refused"), dict):
            st.error(f"The consumer refused `{command_text(sent[1])}`: {said['refused'].get('reason')}",
                     icon=":material/block:")
        elif said is not None:
            st.success(f"The consumer carried out `{command_text(sent[1])}` (sent {ago(sent[2])}): it serves "
                       f"`{said.get('serving')}`.", icon=":material/check:")
        else:
            st.success(f"Sent `{command_text(sent[1])}` to `{feed.prefix}/_consumer/{view_id}/command` "
                       f"({ago(sent[2])}); the consumer reports its versions again when it has acted.",
                       icon=":material/check:")
    if view and view.commands:
        st.caption("Commands seen on the broker: " + "; ".join(
            f"{c.get('action')} {c.get('version') or ''} ({ago(at)})" for at, c in view.commands[-5:][::-1]))


def command_text(body: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in body.items() if k != "id")


feed = get_feed()
consumers = [v.consumer for v in feed.store.consumers()]
if not consumers:
    @st.fragment(run_every=REFRESH_SECONDS)
    def wait() -> None:
        if get_feed().store.consumers():
            st.rerun()
        feed_status(feed)
        st.info(f"Waiting for a consumer: none has published on `{feed.prefix}/_consumer/+/…` yet. Start one "
                "with `harstream consume`.", icon=":material/hourglass_empty:")

    wait()
    st.stop()
# online consumers come first, so the default is one that can act on a command
consumer = st.selectbox("Consumer", consumers, key="model_consumer") if len(consumers) > 1 else consumers[0]
live(consumer)
commands(consumer)
