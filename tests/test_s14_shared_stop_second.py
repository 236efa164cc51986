"""A second look at the clean stop (de02fef): stops while the broker is down or coming back.

1. A consumer stopped while its broker was down raised out of ``run()`` (paho's ``wait_for_publish`` of the
   'offline' status: "The client is not currently connected"), so ``harstream consume`` ended with status 2
   and an error line after a SIGTERM, and never stopped paho's loop. It now says so in a WARNING and stops.
2. A replica of a shared group (clean session) stopped while the broker was down left the shared subscription
   in the list connect() subscribes at every reconnection: when the broker came back before the replica had
   disconnected (after the hand-over, reading again for the PUBACKs of its last messages), it subscribed
   again, and its share of what followed was neither taken nor acknowledged, then lost with the clean
   session (the other replicas never got it). It now subscribes to it no more.
3. What arrives after the hand-over is neither taken nor acknowledged; a clean session loses it. It is now
   counted and named in a WARNING at the end.

The first two run a private Mosquitto of their own (stopped and started again); the third the test broker.
"""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect
from tests.helpers import imu, wait
from tests.test_review_simulators import _restartable_mosquitto


def _start(config: ConsumerConfig, model) -> tuple[Consumer, threading.Thread, list[BaseException]]:
    consumer = Consumer(config, StatefulClassifier(model, "tiny"))
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert wait(lambda: consumer._client is not None and consumer._client.is_connected(), 20)
    return consumer, thread, errors


def test_a_stop_while_the_broker_is_down_ends_cleanly(tmp_path, tiny_model):
    with _restartable_mosquitto(tmp_path) as (url, stop_broker, _):
        prefix = f"hartest{uuid.uuid4().hex[:8]}"
        consumer, thread, errors = _start(ConsumerConfig(broker=url, prefix=prefix, learn=False,
                                                         metrics_interval=60.0), tiny_model)
        stop_broker()
        assert wait(lambda: not consumer._client.is_connected(), 10)
        consumer.stop()
        thread.join(30)
        assert not thread.is_alive()
        assert not errors, errors
        assert consumer._client._thread is None  # paho's loop was stopped


def test_a_replica_stopping_does_not_subscribe_again_when_the_broker_comes_back(tmp_path, tiny_model):
    with _restartable_mosquitto(tmp_path) as (url, stop_broker, start_broker):
        prefix = f"hartest{uuid.uuid4().hex[:8]}"

        def config(name: str) -> ConsumerConfig:
            return ConsumerConfig(broker=url, prefix=prefix, consumer_id=f"{prefix}-{name}", learn=False,
                                  shared_group="g", metrics_interval=60.0, qos=1)
        a, a_thread, a_errors = _start(config("a"), tiny_model)
        b, b_thread, b_errors = _start(config("b"), tiny_model)
        gate, sealed = threading.Event(), threading.Event()
        checkpoint = a.checkpoint

        def held_after_the_hand_over(final: bool = False) -> bool:
            if final:  # handed over and sealed: reading again (PUBACKs of the last status messages)
                sealed.set()
                gate.wait(30)
            return checkpoint(final=final)
        a.checkpoint = held_after_the_hand_over
        pub = None
        try:
            stop_broker()
            assert wait(lambda: not a._client.is_connected() and not b._client.is_connected(), 10)
            a.stop()
            assert wait(sealed.is_set, 10), "a did not hand over"
            start_broker()
            assert wait(lambda: a._client.is_connected() and b._client.is_connected(), 20), "no reconnection"
            pub = connect(url, "test-s14-pub")
            # b's subscription is in place once a probe reaches it (a message to no member is lost)
            probes = 0

            def b_has_a_probe() -> bool:
                nonlocal probes
                pub.publish(f"{prefix}/probe/imu", imu(probes, 100.0 + probes * 0.2), qos=1).wait_for_publish(5)
                probes += 1
                return wait(lambda: b.stats.messages + b._queue.qsize() > 0, 0.3)
            assert wait(b_has_a_probe, 15), "b never got a probe"
            before = b.stats.messages + b._queue.qsize()
            sent = 20
            for k in range(sent):
                pub.publish(f"{prefix}/dev-{k % 4}/imu", imu(k // 4, 100.0 + (k // 4) * 0.2),
                            qos=1).wait_for_publish(5)
            # the stopping replica a is no member of the group any more: every message goes to b
            assert wait(lambda: b.stats.messages + b._queue.qsize() - before >= sent, 10), \
                (f"b got {b.stats.messages + b._queue.qsize() - before} of {sent}: the stopping replica a "
                 f"subscribed to the shared subscription again")
        finally:
            gate.set()
            a.stop()
            b.stop()
            a_thread.join(30)
            b_thread.join(30)
            if pub is not None:
                pub.disconnect()
                pub.loop_stop()
        assert not a_errors and not b_errors, (a_errors, b_errors)


@pytest.mark.broker
def test_what_comes_after_the_hand_over_is_counted_and_named(broker_url, tiny_model, caplog):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    consumer, thread, errors = _start(ConsumerConfig(broker=broker_url, prefix=prefix, learn=False,
                                                     ack="on-receipt", metrics_interval=60.0, qos=1), tiny_model)
    pub = connect(broker_url, "test-s14-pub")
    checkpoint = consumer.checkpoint
    sent = 5

    def late_messages(final: bool = False) -> bool:  # the final checkpoint comes after the hand-over
        if final:
            for k in range(sent):
                pub.publish(f"{prefix}/dev-late/imu", imu(k, 100.0 + k * 0.2), qos=1).wait_for_publish(5)
            wait(lambda: getattr(consumer, "_unread_at_stop", 0) >= sent, 10)
        return checkpoint(final=final)
    consumer.checkpoint = late_messages
    try:
        with caplog.at_level(logging.WARNING, logger="stream.consumer"):
            consumer.stop()
            thread.join(30)
        assert not thread.is_alive() and not errors, errors
        assert consumer.stats.messages == 0  # none was taken
        said = [r.getMessage() for r in caplog.records if "after the hand-over" in r.getMessage()]
        assert said and said[0].startswith(f"{sent} messages") and "lost with this clean session" in said[0], said
    finally:
        consumer.stop()
        thread.join(30)
        pub.disconnect()
        pub.loop_stop()
