"""Payload adapters: every sample format the consumer accepts becomes ``SampleBatch``es.

An adapter turns one MQTT payload into a list of ``stream.decode.SampleBatch`` (device, float64
seconds, float32 (n, 3) specific force in m/s² in the Android convention, so a phone lying still
screen up reads about +9.81 on z; optional gyro in rad/s) or raises ``Rejected`` with a reason from
``REJECT_REASONS``; the list is a ``Batches``, whose ``dropped`` names the parts of the message left
out while the rest is taken (the consumer counts them as rejected). ``AdapterRouter`` picks the
adapter by topic and takes the device id from the topic, so the broker's ACL (which can only see
topics) decides who may speak for a device.

Formats:

- ``native``: our ``<prefix>/<device>/imu`` payload (``stream.decode.decode_imu``).
- ``sensor_logger``: the Sensor Logger app's MQTT/HTTP push JSON, ``{messageId, sessionId, deviceId,
  payload: [{name, time (ns since the epoch), values: {x, y, z}}, ...]}``. Its ``accelerometer`` is
  user acceleration WITHOUT gravity; the specific force is ``totalacceleration`` (Android only) or
  ``accelerometer`` + ``gravity``; ``accelerometeruncalibrated`` is the raw sensor. On iOS, with the
  app's "Standardise Units & Frames" off (its default), acceleration and gravity have the opposite
  sign and the uncalibrated accelerometer is in g. Use ``sensor_logger`` for Android phones and
  iPhones with "Standardise Units & Frames" on, ``sensor_logger_ios`` for iPhones with it off (sign
  flipped). Whatever the name, a message whose uncalibrated accelerometer is in g can only come from
  an iPhone with the setting off, so it is read as one (and a message with ``totalacceleration``,
  Android only, never is): g when its median magnitude is under a third of ``accelerometer`` +
  ``gravity``'s (m/s² everywhere) in the same message, or, without them, under 3 (about 1 g at rest;
  a phone in free fall reads near 0 in either unit, so that guess can fail mid-jump). ``accelerometer``
  samples more than 0.1 s before the first ``gravity`` sample or after the last are left out, counted
  ``no_gravity`` (a part before, a part after; the whole message when none is left). Its
  ``gyroscope`` (rad/s) is interpolated to the acceleration's times; samples with no gyroscope sample
  within ``SensorLoggerAdapter.GYRO_HOLD`` (0.1 s, or two of its sample intervals if longer) carry
  none, in a batch of their own, as a message without the gyroscope does. A message keeps the gyroscope
  over at most ``GYRO_RUNS`` (4) runs, so gives 9 batches at most: beyond, the gyroscope is interpolated
  over the shortest gaps between its runs, up to 1 s, and then the shorter runs go without it, except
  runs lasting 1 s or more (``GYRO_KEEP``), which always keep it.
- ``android``: Android sensor-event JSON as sent by SensorSpot and similar apps, ``{type:
  "android.sensor.accelerometer", timestamp: ns since boot, values: [x, y, z]}``, one event per
  message (or a list of events). Without ``type`` (SensorSpot's "dedicated topics"), the topic's last
  level names the sensor. ``android.sensor.accelerometer_uncalibrated`` is read too (its first 3
  values, minus the estimated bias in values 4 to 6 where the event has them, as Android defines it),
  except in a message that also holds calibrated accelerometer events: only those are read. The
  events of the accelerometer read count toward ``MAX_SAMPLES`` (before any is read), not the events of
  other types (a message holds ``AndroidAdapter.MAX_EVENTS`` events of every type at most).
  Other sensor types are rejected as ``ignored_type``: counted, so a phone that sends only gyroscope
  or linear acceleration shows up in the consumer's metrics.
- ``csv``: text lines ``t,ax,ay,az[,gx,gy,gz]`` (seconds, m/s², rad/s; decimal numbers such as -1.5e-3, or
  nan and inf, refused as ``non_finite``; padded with spaces, ASCII or Unicode such as the no-break space
  U+00A0 that phone apps in some locales write, none inside a number; the control characters U+001C to
  U+001F are no spaces); blank lines, ``#`` comments, a header line (``t,...`` or ``time,...``) and a
  leading byte-order mark are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import ClassVar

import numpy as np
import orjson

from stream.decode import (
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLES,
    REASONS,
    G,
    Rejected,
    SampleBatch,
    check_range,
    check_time,
    decode_imu,
    valid_device,
)

__all__ = [
    "ADAPTERS",
    "ADAPTER_REASONS",
    "Adapter",
    "AdapterRouter",
    "AndroidAdapter",
    "Batches",
    "CsvAdapter",
    "NativeAdapter",
    "REJECT_REASONS",
    "Route",
    "SensorLoggerAdapter",
]

ADAPTER_REASONS = (
    "ignored_type",  # nothing in the message this adapter uses (another sensor, no gravity sensor at all, ...)
    "bad_csv",  # CSV that is not UTF-8 text of numbers
    "no_gravity",  # Sensor Logger accelerometer samples more than 0.1 s outside its gravity samples
)
REJECT_REASONS = REASONS + tuple(r for r in ADAPTER_REASONS if r not in REASONS)
MAX_TOPIC = 256  # characters
_LINE_END = re.compile(r"\r\n|\r|\n")


def _object(payload: bytes) -> dict | list:
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejected("bad_json", str(exc)[:80]) from None
    if not isinstance(msg, (dict, list)):
        raise Rejected("not_object", type(msg).__name__)
    return msg


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What a CSV number may be padded with: ASCII whitespace (what float() strips: not the information separators
# U+001C to U+001F, control characters str.strip() takes for spaces) and the Unicode space separators (category
# Zs): phone apps in some locales write a no-break space (U+00A0) or a narrow one (U+202F) around numbers,
# which were refused where ' 1.5' was read. Inside a number a space is none of it ('1 000' is refused)
_PADDING = (" \t\x0b\x0c\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
            "\u2008\u2009\u200a\u202f\u205f\u3000")


def _csv_float(field: str) -> float:
    """``field`` as a CSV number: what float() reads in ASCII without '_' (nan and inf too, refused later as
    non_finite, as decode_imu does), padded with spaces (``_PADDING``); ValueError if it is none. float()
    alone also reads '1_0' as 10 and '９' as 9."""
    core = field.strip(_PADDING)
    if "_" in core or not core.isascii():
        raise ValueError(field)
    return float(core)


def _csv_number(field: str) -> bool:
    try:
        _csv_float(field)
    except ValueError:
        return False
    return True


def _ordered(t: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sorted by time, the first of equal times kept (phones repeat samples)."""
    order = np.argsort(t, kind="stable")
    t = t[order]
    unique = np.concatenate([[True], np.diff(t) > 0])
    return (t[unique],) + tuple(c[order][unique] for c in columns)


class Batches(list):
    """What an adapter makes of one message: its ``SampleBatch``es in time order (a list), and ``dropped``,
    a ``Rejected`` for each part of the message left out while the rest is taken (``no_gravity``), which the
    consumer counts as rejected."""

    def __init__(self, batches: Iterable[SampleBatch] = (), dropped: Iterable[Rejected] = ()) -> None:
        super().__init__(batches)
        self.dropped: list[Rejected] = list(dropped)


def _checked(device: str, t: np.ndarray, acc: np.ndarray, gyro: np.ndarray | None = None) -> SampleBatch:
    if len(t) == 0:
        raise Rejected("empty")
    if len(t) > MAX_SAMPLES:
        raise Rejected("too_many_samples", f"{len(t)} > {MAX_SAMPLES}")
    with np.errstate(over="ignore"):  # checked after the cast: 1e39 is finite in float64, not in float32
        acc = acc.astype(np.float32)
        gyro = None if gyro is None else gyro.astype(np.float32)
    if not (np.isfinite(t).all() and np.isfinite(acc).all()):
        raise Rejected("non_finite", "t or acc")
    if gyro is not None and not np.isfinite(gyro).all():
        raise Rejected("non_finite", "gyro")
    check_time(t)
    check_range(acc, gyro)
    return SampleBatch(device=device, t=t.astype(np.float64), acc=acc, gyro=gyro)


class Adapter:
    """One payload format: ``decode(payload, device, topic)`` gives batches or raises ``Rejected``.

    ``device`` is the id the router took from the topic (already validated), or None where the
    route has none; an adapter that cannot find one in the payload rejects with ``bad_device``.
    """

    name: ClassVar[str] = ""
    device_in_payload: ClassVar[bool] = False  # can find the device id in the payload itself

    def __init__(self, max_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes

    def decode(self, payload: bytes, device: str | None = None, topic: str = "") -> Batches:
        if len(payload) > self.max_bytes:
            raise Rejected("oversize", f"{len(payload)} bytes > {self.max_bytes}")
        if device is None and not self.device_in_payload:
            raise Rejected("bad_device", f"{self.name} payloads carry no device id: it comes from the topic")
        batches = self._decode(payload, device, topic)
        return batches if isinstance(batches, Batches) else Batches(batches)

    def _decode(self, payload: bytes, device: str | None, topic: str) -> list[SampleBatch]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_bytes={self.max_bytes})"


class NativeAdapter(Adapter):
    """``<prefix>/<device>/imu``: our own batch format (DESIGN.md); keeps ``seq``."""

    name = "native"

    def _decode(self, payload: bytes, device: str | None, topic: str) -> list[SampleBatch]:
        batch = decode_imu(payload, device, self.max_bytes)
        # decode_imu checks finiteness before its float32 cast; 1e39 m/s² would arrive as inf
        if not np.isfinite(batch.acc).all() or (batch.gyro is not None and not np.isfinite(batch.gyro).all()):
            raise Rejected("non_finite", "acc or gyro beyond float32")
        return [batch]


class SensorLoggerAdapter(Adapter):
    """The Sensor Logger app's push JSON (see the module docstring for units and signs).

    ``frame`` is ``"android"`` (Android phones; iPhones with "Standardise Units & Frames" on) or
    ``"ios"`` (iPhones with it off: acceleration and gravity are negated). The device id comes from
    the topic when the route has one (the broker vouches for topics, not for payloads), else from
    ``deviceId``, which must then be a valid device id.
    """

    name = "sensor_logger"
    device_in_payload = True
    TOTAL, LINEAR, GRAVITY, RAW, GYRO = ("totalacceleration", "accelerometer", "gravity",
                                         "accelerometeruncalibrated", "gyroscope")
    MAX_ENTRIES = 8 * MAX_SAMPLES  # all sensors of one message together
    GRAVITY_SLACK = 0.1  # seconds: user acceleration this far outside the gravity samples is dropped (no_gravity)
    # seconds: the least a gyroscope sample is held or interpolated over (the sensors of one message start and
    # end up to a sample apart; a message of one sample each). Held without limit, a gyroscope that stopped
    # early in a message gave every later sample its last value, however far
    GYRO_HOLD = 0.1
    G_MEDIAN = 3.0  # m/s²: alone, a raw accelerometer whose median magnitude is below this is in g
    G_RATIO = 3.0  # beside accelerometer + gravity (m/s²): a raw one whose median magnitude is this much smaller
    # is in g (g units make it 9.8 times smaller)
    # the most runs of samples with the gyroscope in one message, so at most 2 * GYRO_RUNS + 1 batches: a gyroscope
    # flickering on and off made a batch of every run, up to 2,000 for one message (_bounded)
    GYRO_RUNS = 4
    GYRO_BRIDGE = 1.0  # seconds: the longest gap between runs that _bounded interpolates the gyroscope over, the
    # longest silence the consumer's buffer bridges (DeviceBuffer's max_gap)
    # seconds: a run this long keeps the gyroscope whatever the count (what GYRO_RUNS bounds is a flicker of short
    # runs; left out, a run of seconds cost a gyro model windows of real samples). Such runs, more than
    # GYRO_BRIDGE apart, are at most one for every 2 s of a message
    GYRO_KEEP = 1.0

    def __init__(self, frame: str = "android", max_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        super().__init__(max_bytes)
        if frame not in ("android", "ios"):
            raise ValueError(f"Invalid 'frame' {frame!r}. Valid values are: 'android', 'ios'")
        self.frame = frame

    def _decode(self, payload: bytes, device: str | None, topic: str) -> list[SampleBatch]:
        msg = _object(payload)
        if not isinstance(msg, dict):
            raise Rejected("not_object", "list")
        if device is None:
            device = msg.get("deviceId")
            if not isinstance(device, str) or not valid_device(device):
                raise Rejected("bad_device", f"deviceId {device!r}"[:80])
        entries = msg.get("payload")
        if not isinstance(entries, list):
            raise Rejected("bad_shape", "no payload list")
        if len(entries) > self.MAX_ENTRIES:
            raise Rejected("too_many_samples", f"{len(entries)} entries > {self.MAX_ENTRIES}")
        series = self._series(entries)
        with np.errstate(over="ignore", invalid="ignore"):  # absurd values end as non_finite below
            return self._specific_force(device, series)

    def _specific_force(self, device: str, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> Batches:
        raw = series.get(self.RAW)
        dropped: list[Rejected] = []
        # g units only come from an iPhone not standardised; totalacceleration only from Android
        raw_norm = None if raw is None else float(np.median(np.linalg.norm(raw[1], axis=1)))
        raw_in_g = False
        if self.TOTAL in series:
            t, acc = series[self.TOTAL]
        elif self.LINEAR in series and self.GRAVITY in series:
            t, acc, dropped = self._with_gravity(series[self.LINEAR], series[self.GRAVITY])
            # the same specific force, in m/s² on every platform and setting: the raw sensor's scale
            # against it (a phone in free fall reads near 0 in either unit, so its own size says nothing)
            raw_in_g = raw_norm is not None and raw_norm * self.G_RATIO < float(
                np.median(np.linalg.norm(acc, axis=1)))
        elif raw is not None:
            raw_in_g = raw_norm < self.G_MEDIAN
            t, acc = raw[0], raw[1] * (G if raw_in_g else 1.0)
        else:
            found = ", ".join(sorted(series)) or "no acceleration"
            raise Rejected("ignored_type", f"need totalacceleration, accelerometer + gravity or "
                                           f"accelerometeruncalibrated; found {found}")
        if self.frame == "ios" or raw_in_g:
            acc = -acc
        if self.GYRO not in series:
            return Batches([_checked(device, t, acc)], dropped)
        gyro, covered = self._gyro(t, series[self.GYRO])
        batch = _checked(device, t, acc, gyro)
        if covered.all():
            return Batches([batch], dropped)
        # the samples far from any gyroscope sample carry none, as a message without one: a model that reads
        # the gyroscope refuses them (no_gyro), the others keep theirs. One batch per run, in time order
        starts, ends, covered = self._bounded(t, covered)
        return Batches([SampleBatch(device, batch.t[a:b], batch.acc[a:b], batch.gyro[a:b] if covered[a] else None)
                        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)], dropped)

    def _bounded(self, t: np.ndarray, covered: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The runs of ``covered`` (starts, ends) and ``covered`` itself, with at most ``GYRO_RUNS`` runs covered.

        Beyond, the gyroscope is interpolated over the shortest gaps between its runs (the time from the last
        sample with it to the next), up to ``GYRO_BRIDGE``: the accelerometer's samples there are real, where a
        model reading the gyroscope refused them and the buffer interpolated both sensors over the hole. Still
        beyond, the shorter runs (in samples) go without it, in the batches around them: a model reading the
        gyroscope refuses them (no_gyro), one that does not takes them all as before. A run lasting
        ``GYRO_KEEP`` or more keeps it whatever the count (then more than ``GYRO_RUNS`` runs have it)."""
        def runs(covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            cuts = np.flatnonzero(np.diff(covered)) + 1
            return np.concatenate([[0], cuts]), np.concatenate([cuts, [len(covered)]])

        starts, ends = runs(covered)
        with_gyro = np.flatnonzero(covered[starts])
        excess = len(with_gyro) - self.GYRO_RUNS
        if excess <= 0:
            return starts, ends, covered
        # the gaps between two runs with the gyroscope, shortest first (stable: the earlier of equal ones)
        gaps = with_gyro[:-1] + 1
        spans = t[ends[gaps]] - t[starts[gaps] - 1]
        order = np.argsort(spans, kind="stable")
        covered = covered.copy()
        for gap in gaps[order[:excess]][spans[order[:excess]] <= self.GYRO_BRIDGE]:
            covered[starts[gap]:ends[gap]] = True
        starts, ends = runs(covered)
        with_gyro = np.flatnonzero(covered[starts])
        if len(with_gyro) > self.GYRO_RUNS:
            long = t[ends[with_gyro] - 1] - t[starts[with_gyro]] >= self.GYRO_KEEP
            short = with_gyro[~long]
            room = max(self.GYRO_RUNS - int(long.sum()), 0)
            covered = np.zeros(len(t), dtype=bool)
            for run in (*with_gyro[long], *short[np.argsort(-(ends - starts)[short], kind="stable")[:room]]):
                covered[starts[run]:ends[run]] = True
            starts, ends = runs(covered)
        return starts, ends, covered

    def _gyro(self, t: np.ndarray, gyro: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The gyroscope interpolated to ``t``, and which of ``t`` have a gyroscope sample within the hold:
        the larger of ``GYRO_HOLD`` and two of the gyroscope's median sample intervals in the message."""
        gt, gv = gyro
        hold = self.GYRO_HOLD
        if len(gt) > 1:
            hold = max(hold, 2.0 * float(np.median(np.diff(gt))))
        after = np.searchsorted(gt, t)
        nearest = np.minimum(np.abs(t - gt[np.maximum(after - 1, 0)]), np.abs(gt[np.minimum(after, len(gt) - 1)] - t))
        # np.interp holds the ends: one sample (a short batch period) serves the message's times near it
        return np.stack([np.interp(t, gt, gv[:, i]) for i in range(3)], axis=1), nearest <= hold

    def _series(self, entries: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """name -> (t in seconds, (n, 3) values), for the sensors used; others are skipped."""
        used = (self.TOTAL, self.LINEAR, self.GRAVITY, self.RAW, self.GYRO)
        rows: dict[str, tuple[list[float], list[list[float]]]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise Rejected("bad_shape", "payload entries must be objects with a name")
            name = entry["name"].lower()
            if name not in used:
                continue
            time, values = entry.get("time"), entry.get("values")
            if not _is_number(time):
                raise Rejected("bad_time", f"{name} time {time!r}"[:60])
            if not isinstance(values, dict) or not all(_is_number(values.get(k)) for k in "xyz"):
                raise Rejected("bad_shape", f"{name} values must be {{x, y, z}} numbers")
            times, xyz = rows.setdefault(name, ([], []))
            times.append(float(time) * 1e-9)
            xyz.append([float(values["x"]), float(values["y"]), float(values["z"])])
        return {name: _ordered(np.asarray(times), np.asarray(xyz, dtype=np.float64))
                for name, (times, xyz) in rows.items()}

    def _with_gravity(self, linear: tuple[np.ndarray, np.ndarray], gravity: tuple[np.ndarray, np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray, list[Rejected]]:
        """User acceleration + gravity interpolated to its times (equal on iOS, not always on Android), and
        a ``no_gravity`` for the samples left out before the first gravity sample and after the last."""
        (t, a), (gt, g) = linear, gravity
        before, after = t < gt[0] - self.GRAVITY_SLACK, t > gt[-1] + self.GRAVITY_SLACK
        if (before | after).all():
            raise Rejected("no_gravity", f"no accelerometer sample within {self.GRAVITY_SLACK} s of the gravity "
                                         f"samples")
        dropped = [Rejected("no_gravity", f"{n} accelerometer samples more than {self.GRAVITY_SLACK} s {side} "
                                          f"gravity sample")
                   for n, side in ((int(before.sum()), "before the first"), (int(after.sum()), "after the last"))
                   if n]
        inside = ~(before | after)
        t, a = t[inside], a[inside]
        return t, a + np.stack([np.interp(t, gt, g[:, i]) for i in range(3)], axis=1), dropped


class AndroidAdapter(Adapter):
    """Android ``SensorEvent`` JSON (SensorSpot, SensaGram, SensorServer): device from the topic.

    ``timestamp`` is the event's nanoseconds since boot: a per-device clock, which the buffers
    handle (a reboot restarts it; ``DeviceBuffer`` sees the clock go back and restarts its grid).
    """

    name = "android"
    ACCELEROMETERS = ("android.sensor.accelerometer", "android.sensor.accelerometer_uncalibrated")
    # events of every type in one message; the events of the accelerometer read are held to MAX_SAMPLES (counting
    # every event there refused a message of 1,200 gyroscope and 900 accelerometer events, all of them lost)
    MAX_EVENTS = 8 * MAX_SAMPLES

    def _decode(self, payload: bytes, device: str | None, topic: str) -> list[SampleBatch]:
        msg = _object(payload)
        events = msg if isinstance(msg, list) else [msg]
        if len(events) > self.MAX_EVENTS:
            raise Rejected("too_many_samples", f"{len(events)} events > {self.MAX_EVENTS}")
        if not events:
            raise Rejected("empty")
        implied = "android.sensor." + topic.rsplit("/", 1)[-1]  # SensorSpot's dedicated topics
        kinds = []  # each event's sensor type, any JSON value
        for event in events:
            if not isinstance(event, dict):
                raise Rejected("not_object", f"event {type(event).__name__}")
            kinds.append(event.get("type", implied))
        # both accelerometers in one message: the calibrated one alone (the other, bias not removed,
        # interleaved with it, would zigzag between the two), and only its events are read
        kind = next((k for k in self.ACCELEROMETERS if k in kinds), None)
        if kind is None:
            raise Rejected("ignored_type", f"{sorted({str(k)[:40] for k in kinds})}"[:80])
        chosen = [event for event, k in zip(events, kinds, strict=True) if k == kind]
        # counted before any is read: a message over the cap cost reading all its events (3bd0866)
        if len(chosen) > MAX_SAMPLES:
            raise Rejected("too_many_samples", f"{len(chosen)} accelerometer events > {MAX_SAMPLES}")
        bias = kind == self.ACCELEROMETERS[1]
        times: list[float] = []
        xyz: list[list[float]] = []
        for event in chosen:
            stamp, values = event.get("timestamp"), event.get("values")
            if not _is_number(stamp):
                raise Rejected("bad_time", f"timestamp {stamp!r}"[:60])
            if not isinstance(values, list) or len(values) < 3 or not all(_is_number(v) for v in values[:3]):
                raise Rejected("bad_shape", "values must be a list of at least 3 numbers")
            times.append(float(stamp) * 1e-9)
            xyz.append([float(v) for v in values[:3]])
            if bias and len(values) >= 6 and all(_is_number(v) for v in values[3:6]):
                xyz[-1] = [a - float(b) for a, b in zip(xyz[-1], values[3:6], strict=True)]  # minus the estimated bias
        t, acc = _ordered(np.asarray(times), np.asarray(xyz, dtype=np.float64))
        return [_checked(device, t, acc)]


class CsvAdapter(Adapter):
    """Lines ``t,ax,ay,az[,gx,gy,gz]`` (seconds, m/s², rad/s), time not decreasing; device from the topic."""

    name = "csv"

    def _decode(self, payload: bytes, device: str | None, topic: str) -> list[SampleBatch]:
        try:  # utf-8-sig: one leading byte-order mark (Windows tools, some phone apps) is not text
            text = payload.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Rejected("bad_csv", "not UTF-8 text") from None
        rows: list[list[float]] = []
        numbers: list[int] = []  # each row's line, to name it
        # lines end at \n, \r\n or \r only: splitlines() also splits at \x85, \u2028, form feeds, ...,
        # which made one garbled line two rows, and the line numbers differ from the sender's
        for number, line in enumerate(_LINE_END.split(text), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(",")
            if not rows and fields[0].strip().lower() in ("t", "time"):
                continue  # a header
            if len(fields) not in (4, 7):
                raise Rejected("bad_shape", f"line {number} has {len(fields)} fields, expected 4 or 7")
            if rows and len(fields) != len(rows[0]):
                raise Rejected("bad_shape", f"line {number} has {len(fields)} fields, line {numbers[0]} has "
                                            f"{len(rows[0])}")
            try:  # float() reads '1_0' as 10, '９' as 9: lines with either go field by field (_csv_float)
                rows.append([float(f) for f in fields] if line.isascii() and "_" not in line else
                            [_csv_float(f) for f in fields])
            except ValueError:
                # the field _csv_float refuses (the first, if float() alone did: they read ASCII alike, and
                # nothing but Rejected may leave here, a StopIteration ended the consumer)
                bad = next((f for f in fields if not _csv_number(f)), fields[0])
                raise Rejected("bad_csv", f"line {number}: {bad[:20]!r} is not a number") from None
            numbers.append(number)
            if len(rows) > MAX_SAMPLES:
                raise Rejected("too_many_samples", f"more than {MAX_SAMPLES} lines")
        if not rows:
            raise Rejected("empty")
        data = np.asarray(rows, dtype=np.float64)
        t = data[:, 0]
        back = np.flatnonzero(np.diff(t) < 0)
        if len(back):
            i = int(back[0]) + 1
            raise Rejected("bad_time", f"t decreases at line {numbers[i]}: {float(t[i])!r} after {float(t[i - 1])!r} "
                                       f"(line {numbers[i - 1]})")
        return [_checked(device, t, data[:, 1:4], data[:, 4:7] if data.shape[1] == 7 else None)]


class _SensorLoggerIos(SensorLoggerAdapter):
    name = "sensor_logger_ios"

    def __init__(self, max_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        super().__init__(frame="ios", max_bytes=max_bytes)


ADAPTERS: dict[str, type[Adapter]] = {
    cls.name: cls
    for cls in (NativeAdapter, SensorLoggerAdapter, _SensorLoggerIos, AndroidAdapter, CsvAdapter)
}


class Route:
    """A topic filter (``+`` wildcards only) and its adapter.

    The device id is the topic level under the filter's FIRST ``+``; a filter without ``+`` takes a
    fixed ``device``, or none if the adapter finds one in the payload (``sensor_logger``).
    """

    def __init__(self, pattern: str, adapter: Adapter, device: str | None = None) -> None:
        levels = pattern.split("/")
        if not pattern or "#" in pattern or any("+" in lv and lv != "+" for lv in levels):
            raise ValueError(f"Invalid topic pattern {pattern!r}: levels are names or '+', no '#'")
        if device is not None and not valid_device(device):
            raise ValueError(f"Invalid device id {device!r}")
        if "+" in levels and device is not None:
            raise ValueError(f"Pattern {pattern!r} has a '+' for the device: give no fixed device")
        if "+" not in levels and device is None and not adapter.device_in_payload:
            raise ValueError(f"Pattern {pattern!r} has no '+' for the device: name one, "
                             f"'{pattern} = {adapter.name}@DEVICE'")
        self.pattern = pattern
        self.adapter = adapter
        self.device = device
        self._levels = levels
        self._device_level = levels.index("+") if "+" in levels else None

    def match(self, levels: list[str]) -> tuple[bool, str | None]:
        """(whether the topic's levels match, the device level or fixed device)."""
        if len(levels) != len(self._levels):
            return False, None
        if not all(p == "+" or p == lv for p, lv in zip(self._levels, levels, strict=True)):
            return False, None
        return True, levels[self._device_level] if self._device_level is not None else self.device

    def __repr__(self) -> str:
        suffix = f"@{self.device}" if self.device else ""
        return f"Route({self.pattern!r} = {self.adapter.name}{suffix})"


class AdapterRouter:
    """Picks the adapter for a topic; the native ``<prefix>/+/imu`` route always comes first.

    Parameters
    ----------
    routes
        Further routes, tried in order after the native one; the first that matches wins.
    prefix
        Topic prefix of the native contract. Other routes may not start with it (nor with ``+``),
        so they never catch labels, predictions or the consumer's own topics.
    max_bytes
        Payload size cap for the native route (the others carry their own).

    Examples
    --------
    >>> router = AdapterRouter.from_spec(["sensorlogger/+ = sensor_logger", "android/+/acc = android"])
    >>> router.subscriptions()
    ['har/+/imu', 'sensorlogger/+', 'android/+/acc']
    >>> event = b'{"type": "android.sensor.accelerometer", "timestamp": 5000000000, "values": [0, 0, 9.81]}'
    >>> [(b.device, b.t.tolist(), b.acc.tolist()) for b in router.decode("android/pixel-7/acc", event)]
    [('pixel-7', [5.0], [[0.0, 0.0, 9.8100004196167]])]
    >>> router.decode("android/bad id/acc", event)
    Traceback (most recent call last):
    ...
    stream.decode.Rejected: bad_device: 'bad id'
    """

    def __init__(self, routes: Sequence[Route] = (), prefix: str = "har",
                 max_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        if not prefix or "/" in prefix or "+" in prefix or "#" in prefix:
            raise ValueError(f"Invalid prefix {prefix!r}")
        for route in routes:
            first = route.pattern.split("/")[0]
            if first in ("+", prefix):
                raise ValueError(f"Invalid pattern {route.pattern!r}: its first level must be a name "
                                 f"other than the prefix {prefix!r}")
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.routes = [Route(f"{prefix}/+/imu", NativeAdapter(max_bytes)), *routes]

    @classmethod
    def from_spec(cls, specs: Iterable[str], prefix: str = "har",
                  max_bytes: int = MAX_PAYLOAD_BYTES) -> AdapterRouter:
        """Routes from ``"PATTERN = NAME"`` or ``"PATTERN = NAME@DEVICE"`` strings (``--adapter``)."""
        routes = []
        for spec in specs:
            pattern, sep, target = spec.rpartition("=")
            name, _, device = target.strip().partition("@")
            name = name.strip()
            if not sep or name not in ADAPTERS:
                raise ValueError(f"Invalid adapter spec {spec!r}: expected 'PATTERN = NAME[@DEVICE]' "
                                 f"with NAME one of {', '.join(ADAPTERS)}")
            routes.append(Route(pattern.strip(), ADAPTERS[name](max_bytes=max_bytes), device.strip() or None))
        return cls(routes, prefix=prefix, max_bytes=max_bytes)

    def subscriptions(self) -> list[str]:
        """Topic filters to subscribe to, one per route."""
        return [route.pattern for route in self.routes]

    def route(self, topic: str) -> tuple[Route, str | None] | None:
        """The first route matching ``topic`` and its device, or None."""
        if len(topic) > MAX_TOPIC:
            return None
        levels = topic.split("/")
        for route in self.routes:
            matched, device = route.match(levels)
            if matched:
                return route, device
        return None

    def matches(self, topic: str) -> bool:
        return self.route(topic) is not None

    def decode(self, topic: str, payload: bytes) -> Batches:
        """The batches in one message and the parts left out (``Batches.dropped``); raises ``Rejected``
        (``bad_topic`` when no route matches)."""
        found = self.route(topic)
        if found is None:
            raise Rejected("bad_topic", topic[:80])
        route, device = found
        if device is not None and not valid_device(device):
            raise Rejected("bad_device", repr(device[:80]))
        return route.adapter.decode(payload, device, topic)

    def __repr__(self) -> str:
        return f"AdapterRouter({self.routes!r}, prefix={self.prefix!r})"
