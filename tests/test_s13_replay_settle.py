"""The replayer waits for paho to have sent some of its messages (each device's seq 0, every 200th at full
speed, the last); a message published while the connection was down made paho's wait_for_publish raise
RuntimeError, and the replay ended with a traceback instead of going on (paho sends it again once it
reconnects)."""

import logging

import paho.mqtt.client as mqtt

from simulators.replay import _settle


def test_a_message_published_while_disconnected_is_a_warning_not_a_traceback(caplog):
    info = mqtt.MQTTMessageInfo(1)
    info.rc = mqtt.MQTT_ERR_NO_CONN  # what publish() returns while the connection is down
    with caplog.at_level(logging.WARNING, logger="simulators.replay"):
        assert _settle(info, 0.01) is False  # before: RuntimeError out of the replay
    assert "not currently connected" in caplog.text


def test_a_full_queue_is_a_warning_too():
    info = mqtt.MQTTMessageInfo(2)
    info.rc = mqtt.MQTT_ERR_QUEUE_SIZE
    assert _settle(info, 0.01) is False


def test_a_message_sent_is_settled():
    info = mqtt.MQTTMessageInfo(3)
    info._set_as_published()
    assert _settle(info, 0.01) is True
