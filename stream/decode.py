"""Decoding and validation of the native ``har/<device>/imu`` payload (DESIGN.md).

Every payload becomes a ``SampleBatch``: float seconds, specific force in m/s², optional gyro in
rad/s. Anything wrong raises ``Rejected`` with a short machine-readable ``reason``; the consumer
counts reasons and goes on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import orjson

__all__ = [
    "DEVICE_ID",
    "G",
    "MAX_PAYLOAD_BYTES",
    "MAX_SAMPLES",
    "REASONS",
    "Rejected",
    "SampleBatch",
    "SequenceCheck",
    "check_range",
    "check_span",
    "check_time",
    "decode_imu",
    "decode_imu_many",
    "json_object",
    "parse_topic",
    "valid_device",
]

G = 9.80665  # m/s² per g
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_SAMPLES = 2000  # per message: 40 s at 50 Hz
UNITS = {"m/s2": 1.0, "g": G}
log = logging.getLogger(__name__)
# The most a body-worn sensor can read: about 1,000 g, and 57,000 °/s (sensors saturate at 16–400 g and
# 2,000–4,000 °/s). A sample beyond is a glitch, refused as "out_of_range": accepted, it would overflow the
# network's float32 features and leave the device's recurrent state NaN for good. Far below float32's
# largest value (3.4e38), so a batch within it is cast to float32 without overflow.
MAX_ACC = 1.0e4  # m/s²
MAX_GYRO = 1.0e3  # rad/s
# seq is a signed 64-bit integer wherever it is kept (the shared state's record); JSON parses integers up to
# 2**64 - 1, and a seq beyond could not be written there (struct.error out of the consumer's cycle)
MAX_SEQ = 2**63 - 1
_INF, _NEG_INF = float("inf"), float("-inf")
# the largest |t| taken, in seconds: the year 5138 in Unix time. Milliseconds (1.7e12 now) or nanoseconds (an
# Android SensorEvent's timestamp) sent as seconds spread 50 Hz samples over hours or years, and every sample
# was a gap or a duplicate (float64's spacing at 1e17 is 16 s): no window ever came, and nothing said why
MAX_T = 1e11
# how much device time one message's samples may cover. Interpolated onto the model's 25 Hz grid, samples just
# under the buffer's 1 s max_gap apart made 25 grid points each: 2,000 of them spread over 1,980 s were 990
# windows from one message, classified one after the other, and one such message a second held every other
# device's predictions back by seconds. No sensor batch is like it: phone apps send 10-100 Hz in batches of a
# few seconds, replays and the simulator 0.2 s; MAX_SAMPLES at 10 Hz is 200 s. Beyond MAX_SPAN seconds, or beyond
# SPARSE_SPAN seconds at fewer than MIN_RATE samples a second, a message is refused "bad_span": at most some 100
# windows per message, and at most 25 / MIN_RATE grid points per sample for one longer than SPARSE_SPAN
MAX_SPAN = 200.0  # s
SPARSE_SPAN = 10.0  # s
MIN_RATE = 4.0  # samples per second, on average, in a message spanning more than SPARSE_SPAN (SensorSpot's 5 Hz passes)

REASONS = (
    "oversize",  # payload larger than the cap
    "bad_json",  # not JSON
    "not_object",  # JSON, but not an object
    "bad_topic",  # topic not <prefix>/<device>/<kind>
    "bad_device",  # device id does not match DEVICE_ID
    "bad_seq",  # seq missing, not an integer, or beyond a signed 64-bit one
    "seq_jump",  # seq more than SequenceCheck.MAX_GAP past the last one, not (yet) confirmed by the next message
    "repeated_seq",  # seq equal to the last one seen
    "backwards_seq",  # seq lower than the last one seen
    "bad_shape",  # acc/gyro not a list of [x, y, z], or t of the wrong length
    "too_many_samples",  # more samples than MAX_SAMPLES
    "empty",  # no samples
    "non_finite",  # NaN or infinity in t, acc or gyro
    "out_of_range",  # acc beyond MAX_ACC m/s² or gyro beyond MAX_GYRO rad/s: no body-worn sensor reads that
    "bad_time",  # no t nor t0 + rate, rate not positive, t decreasing within the batch, or |t| >= MAX_T
    "bad_span",  # samples spread over more device time than a sensor batch: over MAX_SPAN s, or over SPARSE_SPAN s
    # at fewer than MIN_RATE samples a second (check_span)
    "bad_unit",  # unit other than m/s2 or g
    "no_gyro",  # no gyro, for a model that reads the gyroscope (stream.pipeline)
    "ignored_type",  # an adapter's message of a sensor we do not use (stream.adapters)
    "bad_csv",  # a CSV line that is not t,ax,ay,az[,gx,gy,gz] (stream.adapters)
    "no_gravity",  # Sensor Logger accelerometer samples outside its gravity samples (stream.adapters)
    "bad_label",  # a label message without a usable label (stream.labels)
    "bad_command",  # a consumer command that cannot be carried out
)


class Rejected(Exception):
    """A payload that was refused; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class SampleBatch:
    """Samples of one device, as every decoder delivers them."""

    device: str
    t: np.ndarray  # (n,) float64 seconds, device clock
    acc: np.ndarray  # (n, 3) float32 m/s², specific force
    gyro: np.ndarray | None = None  # (n, 3) float32 rad/s
    seq: int | None = None

    def __len__(self) -> int:
        return len(self.t)


def valid_device(device: str) -> bool:
    return DEVICE_ID.fullmatch(device) is not None


def parse_topic(topic: str, prefix: str = "har") -> tuple[str, str]:
    """``<prefix>/<device>/<kind>`` → (device, kind); rejects foreign topics and invalid ids."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != prefix:
        raise Rejected("bad_topic", topic[:80])
    if not valid_device(parts[1]):
        raise Rejected("bad_device", parts[1][:80])
    return parts[1], parts[2]


def _xyz(value: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise Rejected("bad_shape", f"{name} is not a list of [x, y, z] numbers") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise Rejected("bad_shape", f"{name} has shape {arr.shape}, expected (n, 3)")
    return arr


def json_object(payload: bytes, max_bytes: int) -> dict:
    """A JSON object of at most ``max_bytes``, or ``Rejected`` (oversize, bad_json, not_object)."""
    if len(payload) > max_bytes:
        raise Rejected("oversize", f"{len(payload)} bytes > {max_bytes}")
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejected("bad_json", str(exc)[:80]) from None
    if not isinstance(msg, dict):
        raise Rejected("not_object", type(msg).__name__)
    return msg


def decode_imu(payload: bytes, device: str, max_bytes: int = MAX_PAYLOAD_BYTES) -> SampleBatch:
    """Decode and validate one native imu payload of ``device``."""
    return _imu(json_object(payload, max_bytes), device)


def decode_imu_many(items: list[tuple[bytes, str]],
                    max_bytes: int = MAX_PAYLOAD_BYTES) -> list[SampleBatch | Rejected]:
    """``decode_imu`` of each (payload, device), with the checks of all of them done in one go: for
    each item, the batch or the ``Rejected`` that ``decode_imu`` would raise.

    The usual message (``seq``, ``t`` and ``acc`` lists of the same length, m/s², no gyro) costs a
    JSON parse and two array conversions (each message's own: parsed numbers freed at once are
    reused by the next parse, which keeps it fast); a handful of numpy calls then check every such
    message of the cycle together (|acc| within MAX_ACC, ``t`` finite and not decreasing within each
    message), and each message's span (``check_span``). Anything else, and every message whose check fails,
    takes ``decode_imu``'s own path, which names the reason; the others of its cycle stay on the fast one.
    """
    out: list[SampleBatch | Rejected | None] = [None] * len(items)
    fast: list[tuple[int, str, int, int]] = []  # (item, device, seq, samples)
    accs: list[np.ndarray] = []
    times: list[np.ndarray] = []
    for i, (payload, device) in enumerate(items):
        try:
            msg = json_object(payload, max_bytes)
            seq, acc, t = msg.get("seq"), msg.get("acc"), msg.get("t")
            usual = type(seq) is int and seq <= MAX_SEQ and type(acc) is list and type(t) is list
            if (usual and 0 < len(acc) == len(t) <= MAX_SAMPLES and msg.get("gyro") is None
                    and msg.get("unit") in (None, "m/s2")):
                try:
                    acc = np.array(acc, dtype=np.float64)
                    t = np.array(t, dtype=np.float64)
                except (TypeError, ValueError):
                    acc = None
                if acc is not None and acc.ndim == 2 and acc.shape[1] == 3 and t.ndim == 1:
                    fast.append((i, device, seq, len(t)))
                    accs.append(acc)
                    times.append(t)
                    continue
            out[i] = _imu(msg, device)
        except Rejected as exc:
            out[i] = exc
    if fast:
        passing = _passing(accs, times, [f[3] for f in fast])
        for (i, device, seq, _), t, acc, ok in zip(fast, times, accs, passing.tolist(), strict=True):
            if ok and _span_ok(t):  # each batch owns its arrays: a view into the cycle's would keep all of it
                # alive for as long as a buffer keeps any one batch (a device that went quiet, until evicted)
                out[i] = SampleBatch(device, t, acc.astype(np.float32), None, seq)
                continue
            try:  # something to refuse: decode_imu's own checks, in order, name the reason
                out[i] = decode_imu(items[i][0], device, max_bytes)
            except Rejected as exc:
                out[i] = exc
    return out  # type: ignore[return-value]


def _passing(accs: list[np.ndarray], times: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """For each message, whether it passes ``decode_imu``'s checks, computed on all of them laid end to
    end: |acc| within MAX_ACC, t finite and not decreasing within the message (it may go back from one
    message to the next: they are different devices)."""
    acc = np.concatenate(accs) if len(accs) > 1 else accs[0]
    t = np.concatenate(times) if len(times) > 1 else times[0]
    starts = np.zeros(len(sizes), dtype=np.intp)
    np.cumsum(sizes[:-1], out=starts[1:])
    step = t[1:] >= t[:-1]
    step[starts[1:] - 1] = True  # one message's last sample to the next's first
    if float(np.abs(acc).max()) < MAX_ACC and float(np.abs(t).max()) < MAX_T and step.all():  # NaN fails too
        return np.ones(len(sizes), dtype=bool)  # the usual cycle: a handful of calls in all
    bad = ~(np.abs(acc).max(axis=1) < MAX_ACC) | ~(np.abs(t) < MAX_T)  # NaN fails the comparison too
    bad[1:] |= t[1:] < t[:-1]
    bad[starts] = ~(np.abs(t[starts]) < MAX_T) | ~(np.abs(acc[starts]).max(axis=1) < MAX_ACC)  # no step before
    return ~np.logical_or.reduceat(bad, starts)


def _imu(msg: dict, device: str) -> SampleBatch:
    """The checks and conversions of ``decode_imu`` on a parsed JSON object."""
    seq = msg.get("seq")
    if type(seq) is not int or seq > MAX_SEQ:  # bool is not a seq; below -2**63 JSON gives a float
        raise Rejected("bad_seq", repr(seq)[:40])
    if "acc" not in msg:
        raise Rejected("bad_shape", "no acc")
    acc = msg["acc"]
    if isinstance(acc, list) and len(acc) > MAX_SAMPLES:
        raise Rejected("too_many_samples", f"{len(acc)} > {MAX_SAMPLES}")
    acc = _xyz(acc, "acc")
    n = len(acc)
    if n == 0:
        raise Rejected("empty")
    unit = msg.get("unit")
    if unit is None:  # absent, or null as "gyro": null is (senders that write every optional field)
        unit = "m/s2"
    scale = UNITS.get(unit) if isinstance(unit, str) else None
    if scale is None:
        raise Rejected("bad_unit", repr(unit)[:40])
    if "t" in msg:
        try:
            t = np.asarray(msg["t"], dtype=np.float64)
        except (TypeError, ValueError):
            raise Rejected("bad_time", "t is not a list of numbers") from None
        if t.shape != (n,):
            raise Rejected("bad_shape", f"t has shape {t.shape}, acc has {n} samples")
    elif "t0" in msg and "rate" in msg:
        t0, rate = msg["t0"], msg["rate"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (t0, rate)):
            raise Rejected("bad_time", "t0 and rate must be numbers")
        if not rate > 0:
            raise Rejected("bad_time", f"rate {rate!r} is not positive")
        t = t0 + np.arange(n, dtype=np.float64) / rate
    else:
        raise Rejected("bad_time", "neither t nor t0 + rate")
    gyro = None
    if msg.get("gyro") is not None:
        gyro = _xyz(msg["gyro"], "gyro")
        if len(gyro) != n:
            raise Rejected("bad_shape", f"gyro has {len(gyro)} samples, acc has {n}")
    if scale != 1.0:
        with np.errstate(over="ignore"):  # beyond float64: inf, refused below
            acc = acc * scale
    # the usual batch in few numpy calls: |acc| within MAX_ACC (NaN fails the comparison too), t
    # non-decreasing (NaN fails it) between finite ends; anything else takes the checks below, in order
    if (gyro is None and float(np.abs(acc).max()) < MAX_ACC and -MAX_T < t[0] and t[-1] < MAX_T
            and (n == 1 or bool((t[1:] >= t[:-1]).all())) and _span_ok(t)):
        return SampleBatch(device=device, t=t, acc=acc.astype(np.float32), gyro=None, seq=seq)
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf here, and is refused below
        acc32 = acc.astype(np.float32)
        gyro32 = None if gyro is None else gyro.astype(np.float32)
    if not (np.isfinite(acc32).all() and np.isfinite(t).all()):
        raise Rejected("non_finite", "t or acc")
    if gyro32 is not None and not np.isfinite(gyro32).all():
        raise Rejected("non_finite", "gyro")
    if n > 1 and (np.diff(t) < 0).any():
        raise Rejected("bad_time", "t decreases within the batch")
    check_time(t)
    check_range(acc32, gyro32)
    check_span(t)
    return SampleBatch(device=device, t=t, acc=acc32, gyro=gyro32, seq=seq)


def check_time(t: np.ndarray) -> None:
    """Raise ``Rejected("bad_time")`` for a time beyond ``MAX_T`` seconds (finite values)."""
    if len(t) and float(np.abs(t).max()) >= MAX_T:
        raise Rejected("bad_time", f"t {float(np.abs(t).max()):.3g} is beyond {MAX_T:.0e} s: t is in seconds "
                                   f"(milliseconds or nanoseconds?)")


def _span_ok(t: np.ndarray) -> bool:
    """Whether samples at times ``t`` (finite, not decreasing: the decoders' own) pass ``check_span``."""
    return len(t) < 2 or _spread_ok(len(t), float(t[-1] - t[0]))


def _spread_ok(n: int, span: float) -> bool:
    return span <= SPARSE_SPAN or (span <= MAX_SPAN and n - 1 >= MIN_RATE * span)


def check_span(t: np.ndarray) -> None:
    """Raise ``Rejected("bad_span")`` for samples (finite times, in any order) that cover more device time than
    a sensor batch: more than ``MAX_SPAN`` seconds, or more than ``SPARSE_SPAN`` at under ``MIN_RATE`` samples a
    second. Every one within the buffer's ``max_gap`` of the next is interpolated onto the model's grid: spread
    out, a few thousand samples made hundreds of windows, classified one after the other."""
    span = float(t.max() - t.min()) if len(t) > 1 else 0.0
    if not _spread_ok(len(t), span):
        raise Rejected("bad_span", f"{len(t)} samples over {span:.4g} s of device time: a message may cover "
                                   f"{MAX_SPAN:g} s, and over {SPARSE_SPAN:g} s needs {MIN_RATE:g} samples a second")


def check_range(acc: np.ndarray, gyro: np.ndarray | None) -> None:
    """Raise ``Rejected("out_of_range")`` for a sample no body-worn sensor can read (finite values)."""
    if float(np.abs(acc).max(initial=0.0)) > MAX_ACC:
        raise Rejected("out_of_range", f"|acc| {float(np.abs(acc).max()):.3g} m/s² > {MAX_ACC:g}")
    if gyro is not None and float(np.abs(gyro).max(initial=0.0)) > MAX_GYRO:
        raise Rejected("out_of_range", f"|gyro| {float(np.abs(gyro).max()):.3g} rad/s > {MAX_GYRO:g}")


class SequenceCheck:
    """Per-device ``seq`` bookkeeping: refuses repeats and regressions, counts gaps as lost samples.

    ``seq`` counts messages; a gap of k messages is counted as k times the size of the batch that
    reveals it (the best estimate of what the missing messages held), up to ``MAX_GAP`` messages. A larger
    jump is refused (``seq_jump``, the device named) unless the message before it was such a jump that this one
    follows within ``MAX_GAP``: a device numbering anew is believed once its next message confirms the new
    numbering (counted in ``renumbered``; loss counted from the jump's message), and a single corrupted ``seq``
    leaves the device's numbering as it was (the next message continues it). Taken at once, one ``seq`` of
    2**40 had every later message of the device refused ``backwards_seq``. With ``fill_gaps``, a ``seq``
    below the last one that is one of a counted gap's messages arriving late (a publisher that
    reconnected and re-sent its backlog after newer messages, say) is accepted and taken off
    ``lost_samples``; each device remembers its ``MAX_GAPS`` most recent gaps.

    A ``seq`` below the last one whose samples all come more than ``RESTART_GAP`` after the ``newest``
    sample the device has given (the caller knows it: its buffer) is a device numbering anew too, a
    restarted device whose ``seq`` 0 was lost (QoS 0): no copy sent again holds samples newer than every
    one taken, and a restart leaves a gap. It is accepted and counted in ``renumbered``; refused, every
    message of the new session was refused until its ``seq`` passed the old session's last one. (Two
    publishers under one device id interleave their samples with no such gap: the one behind in ``seq``
    stays refused, as before. What is newest is also what the check itself saw of the device, refused
    messages included: a refused batch is samples the device gave, and once a batch of the publisher behind
    was refused, its next came more than ``RESTART_GAP`` after the other's newest whenever that one sends
    longer batches, and was taken.)
    """

    MAX_GAPS = 64  # gaps remembered per device (as ranges of seq, so a huge gap costs no more)
    # a gap of more messages than this is a device that numbers anew (as seq 0 after a higher one) once its next
    # message confirms it, or a corrupted seq, not loss: 5.5 h of messages at 50 a second. Counted as loss, one
    # message jumping to 2**62 made lost_samples too large for the metrics' JSON (orjson stops at 64 bits), which
    # ended the consumer
    MAX_GAP = 1_000_000
    # seconds of device time with no sample before a lower seq counts as a device numbering anew: a restart
    # leaves at least that (the buffer's max_gap, past which its window grid starts again anyway)
    RESTART_GAP = 1.0

    def __init__(self, fill_gaps: bool = True) -> None:
        self._last: dict[str, int] = {}
        self._gaps: dict[str, list[list[int]]] = {}  # device -> [[first, last, samples per message], ...]
        self.fill_gaps = fill_gaps
        self.lost_samples = 0
        self.filled_samples = 0  # samples of late messages that filled a gap (taken off lost_samples)
        self.renumbered = 0  # messages taken as a device numbering anew (seq back, its samples newer)
        self._given: dict[str, float] = {}  # device -> its newest sample in a message checked, refused or not
        self._jumps: dict[str, int] = {}  # device -> the seq of its last message, refused as a jump past MAX_GAP

    def check(self, batch: SampleBatch, newest: float | None = None) -> int:
        """Accept ``batch`` or raise ``Rejected``; returns the samples estimated lost before it
        (negative when the batch fills a gap counted before). ``newest``: the device time of the newest
        sample taken from the device, if known (None: no new numbering, as for a copy sent again); the newest
        sample of a message checked before, refused or not, counts too."""
        last = self._last.get(batch.device)
        seq = batch.seq
        lost = 0
        given = self._given.get(batch.device)
        if seq is not None and len(batch.t) > 0:  # t does not decrease within a batch (decode_imu)
            # seq 0 after a higher one starts the device's newest afresh with its session (its clock may have
            # gone back: measured against the session before's, its next restart's was never newer)
            restart = seq == 0 and last is not None and last > 0
            self._given[batch.device] = (float(batch.t[-1]) if given is None or restart
                                         else max(given, float(batch.t[-1])))
        if newest is not None and given is not None and given > newest:
            newest = given  # a batch refused, or one taken and evicted since, is samples the device gave
        renumbered = (last is not None and seq is not None and seq < last and newest is not None
                      and len(batch.t) > 0 and float(np.min(batch.t)) > newest + self.RESTART_GAP)
        jump = self._jumps.pop(batch.device, None)  # the message before was a jump: this one confirms it, or not
        # seq 0 after a higher one is a device that restarted: a new session, not a regression
        ordered = last is not None and seq is not None and not (seq == 0 and last > 0) and not renumbered
        if ordered and seq - last - 1 > self.MAX_GAP:
            if jump is None or not 0 <= seq - jump - 1 <= self.MAX_GAP:
                self._jumps[batch.device] = seq
                raise Rejected("seq_jump", f"{batch.device} seq {seq} after {last}: taken as a new numbering only "
                                           f"if the next message follows it")
            self._gaps.pop(batch.device, None)  # confirmed: a device numbering anew; earlier gaps are history
            self.renumbered += 1
            log.info("%s: seq %d after %d, following the jump to %d: a device numbering anew",
                     batch.device, seq, last, jump)
            lost = (seq - jump - 1) * len(batch)  # the jump's own message was refused: not counted as lost
        elif ordered:
            if seq == last:
                raise Rejected("repeated_seq", f"{batch.device} seq {seq}")
            if seq < last:
                filled = self._fill(batch.device, seq)
                if filled is None:
                    raise Rejected("backwards_seq", f"{batch.device} seq {seq} after {last}")
                self.lost_samples -= filled
                self.filled_samples += filled
                return -filled
            lost = (seq - last - 1) * len(batch)
            if lost and self.fill_gaps:
                gaps = self._gaps.setdefault(batch.device, [])
                gaps.append([last + 1, seq - 1, len(batch)])
                if len(gaps) > self.MAX_GAPS:
                    del gaps[0]
        elif seq is not None and last is not None:  # a restarted or renumbered device: earlier gaps are history
            self._gaps.pop(batch.device, None)
            if renumbered and seq > 0:  # seq 0 after a higher one: a plain restart
                self.renumbered += 1
                log.info("%s: seq %d after %d with newer samples: a device numbering anew (its seq 0 lost?)",
                         batch.device, seq, last)
        if seq is not None:
            self._last[batch.device] = seq
        self.lost_samples += lost
        return lost

    def _fill(self, device: str, seq: int) -> int | None:
        """Take ``seq`` out of ``device``'s gaps; the samples it had been counted for, or None."""
        gaps = self._gaps.get(device) if self.fill_gaps else None
        for i, (first, end, size) in enumerate(gaps or ()):
            if first <= seq <= end:
                parts = [[a, b, size] for a, b in ((first, seq - 1), (seq + 1, end)) if a <= b]
                gaps[i:i + 1] = parts
                if not gaps:
                    del self._gaps[device]
                return size
        return None

    def last(self, device: str) -> int | None:
        return self._last.get(device)

    def forget(self, device: str) -> None:
        self._last.pop(device, None)
        self._gaps.pop(device, None)
        self._given.pop(device, None)
        self._jumps.pop(device, None)

    def snapshot(self) -> dict[str, int]:
        return dict(self._last)

    def restore(self, last: dict[str, int]) -> None:
        self._last.update(last)
        for device in last:
            self._gaps.pop(device, None)
            self._jumps.pop(device, None)
