"""What every page shares: the process-wide live feed, the class colours and small formatting helpers."""

from __future__ import annotations

import datetime
import math
import os
import time
import zlib
from collections.abc import Callable

import streamlit as st

from dashboard.launch import ENV_CA_FILE, ENV_EVENTS, ENV_PREFIX
from dashboard.live import LiveFeed, load_history
from models.labels import CANONICAL
from stream.mqtt import BrokerURL, default_broker

__all__ = [
    "REFRESH_SECONDS",
    "SILENT_AFTER",
    "PALETTE",
    "ago",
    "class_colour",
    "device_clock",
    "class_scale",
    "consumer_online",
    "drift_value",
    "feed_status",
    "get_feed",
    "number",
    "plural",
    "prediction_shown",
    "quantitative",
    "nominal",
    "prediction_stale",
    "why_stale",
    "status_text",
    "choose_device",
    "remember_sent",
    "wait_for_devices",
]

REFRESH_SECONDS = 1.0  # live panels rerun this often


@st.cache_resource(show_spinner=False, on_release=LiveFeed.close)
def _shared_feed(broker: str, prefix: str, ca_file: str | None) -> LiveFeed:
    # One subscriber per server process, shared by every session and page; never hashed again.
    feed = LiveFeed(BrokerURL.parse(broker, ca_file), prefix)
    events = os.environ.get(ENV_EVENTS)
    if events and os.path.exists(events):  # history from before this server started
        load_history(feed.store, events)
    return feed.start()


def get_feed() -> LiveFeed:
    """The process's live feed for the broker and prefix of the environment (see dashboard.launch)."""
    prefix = os.environ.get(ENV_PREFIX) or "har"
    feed = _shared_feed(default_broker(), prefix, os.environ.get(ENV_CA_FILE) or None)
    feed.ensure()
    return feed


def feed_status(feed: LiveFeed) -> None:
    """A warning when the broker is not (or no longer) connected; nothing otherwise."""
    if not feed.connected:
        st.warning(f"Not connected to the MQTT broker: {feed.error or 'connecting'}. The dashboard keeps "
                   "retrying; what it shows may be stale.", icon=":material/cloud_off:")


@st.fragment(run_every=REFRESH_SECONDS)
def wait_for_devices(feed: LiveFeed) -> None:
    """A waiting note that reruns the page as soon as the first device shows up."""
    if feed.store.device_ids():
        st.rerun()
    feed_status(feed)
    st.info(f"Waiting for devices: nothing received on `{feed.prefix}/+/imu`, `prediction` or `status` yet. "
            "A device is listed as soon as it publishes.", icon=":material/hourglass_empty:")


def choose_device(feed: LiveFeed, key: str) -> str:
    """The device a page shows, from its selectbox (state under ``key``, one per page); the ``?device=`` of the
    address where the page has none yet, so a link to a device (and a switch of page) keeps it. A page waits
    for the first device, and goes no further, while there is none."""
    devices = feed.store.device_ids()
    if not devices:
        wait_for_devices(feed)
        st.stop()
    if st.session_state.get(key) not in devices:
        wanted = st.query_params.get("device")
        st.session_state[key] = wanted if wanted in devices else devices[0]
    device = st.selectbox("Device", devices, key=key)
    st.query_params["device"] = device
    return device


def remember_sent(key: str, target: str, publish: Callable[[], dict]) -> None:
    """``publish()`` (a label, a command), and what came of it in ``st.session_state[key]`` for the page to
    say: ``(target, body, time sent)``, or ``(target, None, why not)`` where the broker or the input refused."""
    try:
        body = publish()
    except (ConnectionError, ValueError) as exc:
        st.session_state[key] = (target, None, str(exc))
    else:
        st.session_state[key] = (target, body, time.time())


def ago(wall: float | None, now: float | None = None) -> str:
    """'3 s ago', '4 min ago', '2 h ago'; '—' for never."""
    if wall is None:
        return "—"
    seconds = max(0.0, (time.time() if now is None else now) - wall)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


EPOCH_FROM = 946_684_800.0  # 2000-01-01 UTC: a device clock beyond it is taken for Unix time


def device_clock(t: float, now: float | None = None) -> str:
    """A device's clock reading as a person reads it: Unix time as the time of day in UTC (with the date when
    not today's), another clock (seconds since the device started) as such. The Label page said "at device time
    1796664804.35 s"."""
    if t >= EPOCH_FROM:
        at = datetime.datetime.fromtimestamp(t, datetime.UTC)
        today = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC).date()
        return at.strftime("%H:%M:%S UTC" if at.date() == today else "%Y-%m-%d %H:%M:%S UTC") + " by its clock"
    return f"{t:,.1f} s by its clock"


def number(value: object, fmt: str = "{:,.1f}", unit: str = "") -> str:
    """A number formatted with its unit; '—' when missing (never a made-up 0)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "—"
    return fmt.format(value) + (f" {unit}" if unit else "")


SILENT_AFTER = 30.0  # s: a device "online" but not heard from for this long is shown as silent


def heard_from(last_seen: float | None, now: float | None = None, within: float = SILENT_AFTER) -> bool:
    """Whether a device was heard from in the last ``within`` seconds."""
    now = time.time() if now is None else now
    return last_seen is not None and now - last_seen <= within


def status_text(status: str | None, last_seen: float | None = None, now: float | None = None,
                silent_after: float | None = None) -> str:
    """The retained status as shown. With ``silent_after`` (devices), an "online" of a device not heard from
    for that long (or never: only the broker's retained copy) shows as silent: a simulator publishing all its
    devices over one connection has one last will, not one per device, so a killed one leaves them "online"."""
    # plain glyphs, not emoji: they render in every font, also in headless browsers
    if status == "online" and silent_after is not None and not heard_from(last_seen, now, silent_after):
        return "◌ online, silent"
    return {"online": "● online", "offline": "○ offline"}.get(status or "", "? unknown")


STALE_WINDOWS = 5  # a device's latest prediction older than this many windows' steps is not current
STALE_MIN = 10.0  # s: ... nor one older than this, whatever the step


def consumer_online(consumers) -> bool:
    """Whether any consumer (a ``ConsumerView``) is online, or of unknown status: as the Overview counts them."""
    return any(view.status != "offline" for view in consumers)


def why_stale(predicted_at: float | None, hop: float | None, last_seen: float | None, online: bool,
              now: float | None = None) -> str | None:
    """Why a device's latest prediction (arrived at ``predicted_at``, wall clock; ``hop``: device seconds
    between its predictions) is no longer current: ``"no consumer"`` online, ``"unclassified"`` (its samples
    still come, no prediction for more than a few windows), ``"silent"`` (nothing heard from the device since
    then); None while it is current, or there is none."""
    if predicted_at is None:
        return None
    now = time.time() if now is None else now
    if not online:
        return "no consumer"
    stale_after = max(STALE_MIN, STALE_WINDOWS * hop) if hop else STALE_MIN
    if now - predicted_at <= stale_after:
        return None
    if last_seen is not None and last_seen - predicted_at > stale_after:
        return "unclassified"
    return "silent"


def prediction_stale(predicted_at: float | None, hop: float | None, last_seen: float | None, online: bool,
                     now: float | None = None) -> str | None:
    """``why_stale`` as a sentence for a device's page; None while the prediction is current. Stopping the
    consumer left "rest, 86% confident" on the Device page a minute later, beside "Last seen 0 s ago" (of the
    raw samples, which still came), without a word."""
    why = why_stale(predicted_at, hop, last_seen, online, now)
    if why is None:
        return None
    when = f"The last prediction came {ago(predicted_at, now)}"
    if why == "no consumer":
        return f"{when}: no consumer is online, so nothing classifies this device's samples now."
    if why == "unclassified":
        return (f"{when}, although the device's samples still come: no consumer classifies them now (one "
                "stuck, or serving other devices).")
    return f"{when}; nothing has been heard from the device since."


def prediction_shown(label: str | None, stale: str | None) -> str:
    """A prediction's label as a metric shows it: greyed when no longer current."""
    if label is None:
        return "—"
    return f":gray[{label}]" if stale else label


def plural(count: int, noun: str, many: str | None = None) -> str:
    """'1 detection', '2 detections' (with thousands separators)."""
    return f"{count:,} {noun if count == 1 else (many or noun + 's')}"


# What a drift detection's ``value`` is, by its signal (stream/monitor.py, DESIGN.md "Drift signals")
DRIFT_VALUES = {
    "orientation": ("{:.0f}°", "the angle (degrees) between the window's gravity direction and the usual one"),
    "input_magnitude": ("{:.2f} m/s²", "the mean |specific force| of recent windows (m/s²)"),
    "confidence": ("{:.0%}", "the mean confidence of recent predictions"),
    "error": ("{:.0%}", "the error rate over recent labelled windows"),
}
DRIFT_VALUE_HELP = ("What the watched signal measured when the detector fired: "
                    + "; ".join(f"{signal.replace('_', ' ')}, {what}" for signal, (_, what) in DRIFT_VALUES.items())
                    + ".")


def drift_value(signal: str, value: float | None) -> str:
    """A drift detection's value with its unit (DRIFT_VALUES); a signal not known, as a plain number."""
    fmt = DRIFT_VALUES.get(signal, ("{:.3g}",))[0]
    return number(value, fmt)


# Vega's tableau20, dark shades first: the first ten exercises get ten distinct hues.
_TABLEAU20 = ("#4c78a8", "#9ecae9", "#f58518", "#ffbf79", "#54a24b", "#88d27a", "#b79a20", "#f2cf5b",
              "#439894", "#83bcb6", "#e45756", "#ff9d98", "#79706e", "#bab0ac", "#d67195", "#fcbfd2",
              "#b279a2", "#d6a5c9", "#9e765f", "#d8b5a5")
PALETTE = _TABLEAU20[0::2] + _TABLEAU20[1::2]


def class_colour(name: str) -> str:
    index = CANONICAL.index(name) if name in CANONICAL else zlib.crc32(name.encode())
    return PALETTE[index % len(PALETTE)]


def quantitative(field: str, **more) -> dict:
    """A Vega-Lite field of numbers, for the pages' chart specs (``st.vega_lite_chart``)."""
    return {"field": field, "type": "quantitative", **more}


def nominal(field: str, **more) -> dict:
    """A Vega-Lite field of names, for the pages' chart specs (``st.vega_lite_chart``)."""
    return {"field": field, "type": "nominal", **more}


def class_scale(classes) -> dict:
    """The same colour for the same exercise in every chart and on every page: a Vega-Lite scale."""
    domain = sorted(set(classes))
    return {"domain": domain, "range": [class_colour(c) for c in domain]}
