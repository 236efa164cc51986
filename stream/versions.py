"""``harstream versions``: the model versions each consumer keeps, and a rollback or a promotion.

A consumer publishes, retained, what it serves and every version it has kept on
``<prefix>/_consumer/<id>/model`` and whether it is up on ``<prefix>/_consumer/<id>/status``; it takes
``{"action": "rollback", "version": v}`` and ``{"action": "promote"}`` on ``<prefix>/_consumer/<id>/command``
(stream.consumer), each with an optional ``id``. This module reads the first two and sends the third with an
id of its own, then waits for the model message whose ``answers`` names that id: it says what the consumer
serves once the command is carried out, or (``refused``) why it was not. A command is done when the consumer
confirms it, not when the broker has it. The dashboard's Model page sends the same commands (with an id of
its own) and finds their answers with ``answer`` too.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import orjson

from stream.mqtt import BrokerURL, connect

__all__ = ["ConsumerModels", "list_consumers", "named", "choose_consumer", "send_command", "answer", "refusal",
           "format_listing"]

CONSUMERS = "_consumer"
REFUSAL_SLACK = 5.0  # s: a refusal stamped this much before the command was sent is still its answer (clocks)


@dataclass
class ConsumerModels:
    """What one consumer says of its models (its retained model and status messages)."""

    consumer: str
    status: str | None = None  # "online", "offline" (its last will), or None when never said
    serving: str | None = None
    versions: list[dict] = field(default_factory=list)  # oldest first, as the consumer lists them
    kept: int = 0  # versions the consumer keeps: more than listed when it has many (the newest are listed)
    updates: int = 0
    skipped: int = 0

    @property
    def learns(self) -> bool:
        """A consumer run with --no-learn keeps no versions and takes no commands."""
        return bool(self.versions)

    @property
    def unlisted(self) -> int:
        """Versions the consumer keeps beyond those it lists (0: the list is all of them)."""
        return max(0, self.kept - len(self.versions))

    def to_dict(self) -> dict:
        return {"consumer": self.consumer, "status": self.status, "serving": self.serving,
                "versions": self.versions, "versions_kept": len(self.versions) + self.unlisted,
                "updates": self.updates, "skipped": self.skipped}


def _count(value) -> int:
    """A count from a message that may not be a consumer's (paho's thread must not raise on it)."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _take(entry: ConsumerModels, body: dict) -> None:
    """What a consumer's model message says, into ``entry``."""
    entry.serving = body.get("serving")
    entry.versions = [v for v in body.get("versions") or [] if isinstance(v, dict)]
    entry.updates, entry.skipped, entry.kept = (_count(body.get(k)) for k in ("updates", "skipped", "versions_kept"))


class _Watch:
    """A subscriber to consumers' model and status topics; ``wait`` until a condition holds."""

    def __init__(self, url: BrokerURL, prefix: str, consumer: str = "+") -> None:
        self.prefix = prefix
        self.found: dict[str, ConsumerModels] = {}
        self.live_models: list[tuple[str, dict]] = []  # model messages sent while we listened (not retained)
        self.last = self.started = time.monotonic()
        self._changed = threading.Condition()
        self.topics = [(f"{prefix}/{CONSUMERS}/{consumer}/{kind}", 1) for kind in ("model", "status")]
        self.client = connect(url, "harstream-versions", subscriptions=self.topics, on_message=self._on_message)

    def _on_message(self, client, userdata, msg) -> None:
        consumer, kind = msg.topic.split("/")[-2:]
        with self._changed:
            entry = self.found.setdefault(consumer, ConsumerModels(consumer))
            if kind == "status":
                entry.status = msg.payload.decode("utf-8", "replace")[:40] or None
            elif kind == "model":
                try:
                    body = orjson.loads(msg.payload)
                except orjson.JSONDecodeError:
                    return  # not a consumer's message: nothing to list
                if not isinstance(body, dict):
                    return
                _take(entry, body)
                if not msg.retain:
                    self.live_models.append((consumer, body))
            self.last = time.monotonic()
            self._changed.notify_all()

    def settle(self, quiet: float, timeout: float) -> None:
        """Wait for the retained messages: until ``quiet`` seconds pass with none, at most ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = time.monotonic()
                quiet_until = max(self.last, self.started) + quiet
                if now >= min(deadline, quiet_until):
                    return
                self._changed.wait(min(deadline, quiet_until) - now)

    def wait(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_consumers(url: BrokerURL, prefix: str = "har", quiet: float = 0.5, timeout: float = 5.0
                   ) -> dict[str, ConsumerModels]:
    """Every consumer that has said something on the broker (its retained messages), by id."""
    with _Watch(url, prefix) as watch:
        watch.settle(quiet, timeout)
        with watch._changed:
            return {k: watch.found[k] for k in sorted(watch.found)}


def named(found: dict[str, ConsumerModels], consumer: str) -> ConsumerModels:
    """``found[consumer]``; ValueError naming the consumers seen where it is not there."""
    if consumer not in found:
        raise ValueError(f"no consumer {consumer!r} on the broker (consumers seen: {', '.join(found) or 'none'})")
    return found[consumer]


def choose_consumer(found: dict[str, ConsumerModels], consumer: str | None, version: str | None = None
                    ) -> ConsumerModels:
    """The consumer a command goes to: ``consumer`` if given, else the only online one that learns (and, for a
    rollback, keeps ``version``). ValueError, naming what there is, where that is not one consumer."""
    if consumer is not None:
        chosen = named(found, consumer)
    else:
        online = [c for c in found.values() if c.status == "online" and c.learns]
        keeping = [c for c in online if any(v.get("version") == version for v in c.versions)]
        if version is not None and keeping:
            online = keeping  # else the one consumer, if one, says below which versions it keeps
        if not online:
            seen = ", ".join(f"{c.consumer} ({c.status or 'status unknown'}"
                             + ("" if c.learns else ", keeps no versions") + ")" for c in found.values())
            raise ValueError(f"no online consumer that learns (consumers seen: {seen or 'none'}; "
                             "a consumer run with --no-learn keeps no versions)")
        if len(online) > 1:
            raise ValueError(f"several consumers could take it ({', '.join(c.consumer for c in online)}): "
                             "give --consumer ID")
        chosen = online[0]
    if chosen.status != "online":
        raise ValueError(f"consumer {chosen.consumer!r} is {chosen.status or 'not known to be online'}")
    if not chosen.learns:
        raise ValueError(f"consumer {chosen.consumer!r} keeps no versions (run with --no-learn?): "
                         f"it serves {chosen.serving!r} only")
    if version is not None:
        info = next((v for v in chosen.versions if v.get("version") == version), None)
        if info is None and chosen.unlisted:
            return chosen  # it keeps older versions than it lists: it says itself whether it keeps this one
        if info is None:
            raise ValueError(f"consumer {chosen.consumer!r} keeps no version {version!r}; it keeps: "
                             + ", ".join(str(v.get("version")) for v in chosen.versions)
                             + ". A model it did not keep (a file of your own, or one an earlier life started from "
                             "without saving it) is served by starting the consumer with `consume --model FILE`")
        if not info.get("path"):
            raise ValueError(f"version {version!r} was not saved to a file; it cannot be restored")
    return chosen


def send_command(url: BrokerURL, prefix: str, consumer: str, action: str, version: str | None = None,
                 timeout: float = 30.0) -> ConsumerModels:
    """Send ``rollback`` (to ``version``) or ``promote`` to ``consumer``, with an id drawn here, and wait for
    the model message from it that answers that id (``answers``). Returns what that message says;
    ValueError with the consumer's reason when its answer says it refused the command (``refused``);
    TimeoutError when it does not answer within ``timeout`` seconds.

    Before, a promote took the first model message that answered no other command by what it said (a version
    not listed before, or still the one served): an automatic promotion landing just before the command's answer
    was taken for it (and a refusal after it never seen). A consumer from before ``answers`` (its model messages
    have no such key) is still answered that way: a rollback by the message serving its version, a promote by
    such a message, a refusal by ``refused`` naming the command."""
    if action not in ("rollback", "promote"):
        raise ValueError(f"Invalid action {action!r}. Valid values are: promote, rollback")
    if action == "rollback" and not version:
        raise ValueError("a rollback needs the version to return to")
    if not consumer or any(c in consumer for c in "/+#"):
        raise ValueError(f"Invalid consumer id {consumer!r}")
    with _Watch(url, prefix, consumer) as watch:
        watch.settle(0.3, 5.0)
        command_id = uuid.uuid4().hex[:16]
        body = {"action": action, **({"version": version} if action == "rollback" else {}), "id": command_id}
        with watch._changed:
            seen = len(watch.live_models)  # only what the consumer says after the command answers it
            # what it said before the command, kept: the entry in found takes every message that comes
            before = replace(watch.found.get(consumer, ConsumerModels(consumer)))
        info = watch.client.publish(f"{prefix}/{CONSUMERS}/{consumer}/command", orjson.dumps(body), qos=1)
        info.wait_for_publish(10.0)
        if not info.is_published():
            raise ConnectionError("the broker did not acknowledge the command within 10 s")

        def answered() -> dict | None:
            with_us = [m for c, m in watch.live_models[seen:] if c == consumer]
            return answer(with_us, body, before=before)

        if not watch.wait(lambda: answered() is not None, timeout):
            raise TimeoutError(f"consumer {consumer!r} did not confirm the {action} within {timeout:g} s "
                               "(it answers a command it refuses: is it busy or stopped? see its log)")
        with watch._changed:
            said = answered()
            after = ConsumerModels(consumer, status=watch.found[consumer].status)
        reason = refusal(said, body)
        if reason is not None:
            raise ValueError(f"consumer {consumer!r} refused the {action}: {reason}")
        _take(after, said)  # as the answer says it: a later message may answer another command
        return after


def refusal(message: dict, command: dict, sent_at: float | None = None) -> str | None:
    """Why the consumer refused ``command`` (its body as sent), if its model message ``message`` says so
    (``refused``: action, version, reason, t). A message naming a command (``answers``) refuses that one; one
    naming none (a consumer from before ``answers``, a command sent without id) refuses this one when its
    refusal names the command's action (and a rollback's version) and, with ``sent_at`` (when the command was
    sent, this clock), is stamped after it (less ``REFUSAL_SLACK``)."""
    refused = message.get("refused")
    if not isinstance(refused, dict):
        return None
    if message.get("answers") is None:  # no command named: the refusal itself must name this one
        action = command.get("action")
        if refused.get("action") != action or (action != "promote"
                                               and refused.get("version") != command.get("version")):
            return None
        t = refused.get("t")
        if sent_at is not None and not (isinstance(t, int | float) and t >= sent_at - REFUSAL_SLACK):
            return None
    return str(refused.get("reason") or "no reason given")


def answer(messages: Iterable[dict], command: dict, before: ConsumerModels | None = None, sent_at: float | None = None
           ) -> dict | None:
    """The first of a consumer's model messages ``messages`` (oldest first) that answers ``command`` (its body as
    sent), carried out or refused (``refusal``); None: none does. One naming the command's ``id`` (``answers``);
    one naming another, or none where the command has an id, answers that other (an automatic promotion, a
    consumer's start, another command).

    From a consumer from before ``answers`` (its messages have no such key), a refusal naming the command
    (``refusal``, ``sent_at``) and, given ``before`` (what the consumer said before the command), a message that
    carries it out by what it says: a rollback's when it serves the version, a promote's when it serves a version
    not listed before or still the one served. One that serves a version listed already, other than the one it
    served, is another's rollback carried out, not a promotion. Without ``before``, refusals only (the dashboard
    keeps no message from before its command)."""
    now = before.serving if before is not None else None
    listed = {v.get("version") for v in before.versions} if before is not None else set()
    action = command.get("action")
    for m in messages:
        if m.get("answers") is not None or ("answers" in m and command.get("id") is not None):
            if m.get("answers") == command.get("id"):
                return m
            continue  # another command's answer, an automatic promotion, a consumer's start
        if m.get("refused") is not None:
            if refusal(m, command, sent_at) is not None:
                return m
            continue  # another command's refusal
        if before is None:
            continue
        if action == "rollback" and m.get("serving") == command.get("version"):
            return m
        if action == "promote":
            if m.get("serving") == now or m.get("serving") not in listed:
                return m
            now = m.get("serving")  # a promotion from here on has these weights if nothing is learnt
    return None


def _when(t) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _metrics(metrics) -> str:
    """A version's promotion metrics, short: numbers to 4 digits, at most 6 of them."""
    if not isinstance(metrics, dict):
        return ""
    shown = [f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
             for key, value in metrics.items() if isinstance(value, (bool, int, float, str))]
    return " ".join(shown[:6])


def format_listing(found: dict[str, ConsumerModels]) -> str:
    """A table per consumer, the version it serves marked with ``*``."""
    if not found:
        return "no consumer has said anything on this broker and prefix (is `harstream consume` running?)"
    lines = []
    for c in found.values():
        kept = len(c.versions) + c.unlisted
        lines.append(f"consumer {c.consumer} ({c.status or 'status unknown'}): serving {c.serving}; "
                     f"{kept} version{'' if kept == 1 else 's'} kept, {c.updates} updates, {c.skipped} skipped")
        if c.unlisted:
            lines.append(f"  ({c.unlisted} older not listed: --rollback takes any kept version's id; "
                         f"their files are in the consumer's --state-dir, models/)")
        if not c.learns:
            lines.append("  keeps no versions (run with --no-learn): nothing to roll back to")
        for v in c.versions:
            mark = "*" if v.get("version") == c.serving else " "
            lines.append(f"  {mark} {v.get('version')!s:<28} {_when(v.get('created'))}  "
                         f"from {v.get('parent') or '-'}  {_metrics(v.get('metrics'))}".rstrip())
    return "\n".join(lines)
