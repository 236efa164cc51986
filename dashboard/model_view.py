"""What the Model page decides from a consumer's messages, apart from the page: a page module draws when it is
imported, so these are tested on their own (tests/test_s14_dashboard_model.py)."""

from __future__ import annotations

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
