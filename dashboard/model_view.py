"""What the Model page decides from a consumer's messages, apart from the page: a page module draws when it is
imported, so these are tested on their own (tests/test_s14_dashboard_model.py)."""

from __future__ import annotations

import os

from dashboard.launch import ENV_STARTED_BY
from dashboard.live import ConsumerView
from stream.versions import answer


def command_answer(view: ConsumerView | None, sent: tuple | None) -> dict | None:
    """The consumer's model message answering the command the page sent (``sent``: ``(consumer, body, time
    sent)`` of ``remember_sent``), carried out or refused; None: none yet, or nothing sent to it. From a consumer
    from before ``answers``, a refusal of it stamped after it was sent (DESIGN.md, consumer topics)."""
    if view is None or not sent or sent[0] != view.consumer or sent[1] is None:
        return None
    return answer([*view.answers, view.model or {}], sent[1], sent_at=sent[2])


def awaiting_answer(view: ConsumerView | None, sent: tuple | None) -> bool:
    """Whether the page sent ``view``'s consumer a command it has not answered yet: while so, the page reruns
    the command's status every REFRESH_SECONDS, so the answer shows when it comes. A fragment with buttons
    reruns only when one is pressed: the newcomer's rollback said "sent … (0 s ago)" for 15 s although the
    consumer had served the version a second later."""
    return (view is not None and bool(sent) and sent[0] == view.consumer and sent[1] is not None
            and command_answer(view, sent) is None)


def adapts_devices_only(view: ConsumerView | None) -> bool:
    """Whether the consumer fine-tunes per-device adapters only (``harstream consume --adapt device``, the
    default): the metrics' ``learner.adapt`` where the consumer names it. From a consumer that does not (before
    2026-12-07), as far as its messages show, read from what learnt: adapter updates, and no update, skipped
    step nor scored window of the shared network (``both`` scores the shared challenger on every labelled
    sequence its adapters learn from), and every fine-tuning report an adapter's (``<version>+adapter:<device>``).
    Such a consumer makes no new version: a promotion serves the same weights again, and there is none to roll
    back to. From an older consumer, before its first adapter update the setting cannot be told (False)."""
    if view is None:
        return False
    learner = (view.metrics or {}).get("learner")
    if not isinstance(learner, dict):
        return False
    if learner.get("adapt") in ("device", "shared", "both"):
        return learner["adapt"] == "device"
    model = view.model or {}
    comparison = model.get("comparison") if isinstance(model.get("comparison"), dict) else learner
    adapter_updates = learner.get("adapter_updates")
    if not isinstance(adapter_updates, int) or isinstance(adapter_updates, bool) or adapter_updates <= 0:
        return False
    if any(model.get(k, learner.get(k)) for k in ("updates", "skipped")) or comparison.get("windows"):
        return False
    return all("+adapter:" in str(step.version) for step in view.training)


def adapters_only_note(started_by: str | None = None) -> str:
    """The Model page's note for a consumer that fine-tunes per-device adapters only (``adapts_devices_only``),
    with advice that fits how it was started: ``harstream demo`` (``started_by`` "demo", else
    ``HARSTREAM_DASHBOARD_STARTED_BY``) takes ``--adapt`` since 2026-12-07; the note said ``--adapt shared``
    to a demo that did not take it."""
    started_by = os.environ.get(ENV_STARTED_BY) if started_by is None else started_by
    if started_by == "demo":
        how = ("To fine-tune the shared network (and see versions, promotion and rollback here), stop the demo and "
               "start it again with `harstream demo --adapt shared` (or `--adapt both`).")
    else:
        how = ("To fine-tune the shared network, start the consumer again with `harstream consume --adapt shared` "
               "(or `--adapt both`), its other options as before; in the demo, `harstream demo --adapt shared`.")
    return ("This consumer fine-tunes a small adapter per labelling device (`--adapt device`, the default), not the "
            "shared network: it makes no new version, so there is nothing to promote or roll back. The "
            "fine-tuning updates shown above are the adapters'. " + how)
