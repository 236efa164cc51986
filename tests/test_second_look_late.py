"""Second look at 29a75a1, a46ee5e, 06d4c66/b2b8dc1 and 04fa213."""

from __future__ import annotations

import socket
import threading

import pytest

from stream.mqtt import BrokerURL, mqtt_answers
from stream.versions import ConsumerModels, choose_consumer


def test_a_rollback_to_a_kept_version_not_listed_is_sent_not_refused():
    """a46ee5e lists the newest 100 of the kept versions and says '--rollback takes any kept version's id',
    but choose_consumer (harstream versions --rollback) refused any id not listed ('keeps no version')
    before sending anything."""
    listed = [{"version": "start", "parent": None, "path": "m/start.pt"},
              *[{"version": f"v{k}", "parent": f"v{k - 1}", "path": f"m/v{k}.pt"} for k in range(200, 300)]]
    entry = ConsumerModels("c", "online", "v299", listed, kept=300)
    assert choose_consumer({"c": entry}, None, "v5") is entry  # kept, not listed: the consumer decides
    assert choose_consumer({"c": entry}, "c", "v5") is entry
    # with every kept version listed, an unknown id is still refused at once
    every = ConsumerModels("c", "online", "v299", listed, kept=len(listed))
    with pytest.raises(ValueError, match="keeps no version"):
        choose_consumer({"c": every}, "c", "v5")


def _mqtt5_only_broker() -> tuple[socket.socket, threading.Thread]:
    """A listener that answers an MQTT 5 CONNECT with a CONNACK and closes any other (as the MQTT 5 spec lets
    a server that speaks 5 only do)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(3)
                try:
                    data = conn.recv(1024)
                except OSError:
                    continue
                # fixed header (1 byte + 1 length byte for a short packet), then "\x00\x04MQTT", level
                if len(data) > 8 and data[0] == 0x10 and data[2:8] == b"\x00\x04MQTT" and data[8] == 5:
                    conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK: no session, success, no properties
                    try:
                        conn.recv(1024)  # until the client disconnects
                    except OSError:
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_a_broker_that_speaks_mqtt5_only_answers():
    """04fa213's mqtt_answers tried MQTT 3.1.1 only: a broker that closes 3.1.1 connections (allowed by the
    MQTT 5 spec) was taken for 'something that does not answer as an MQTT broker' by the demo."""
    server, _ = _mqtt5_only_broker()
    try:
        url = BrokerURL.parse(f"mqtt://127.0.0.1:{server.getsockname()[1]}")
        assert mqtt_answers(url, timeout=3.0)
    finally:
        server.close()


def test_a_silent_listener_is_still_no_broker():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        assert not mqtt_answers(BrokerURL.parse(f"mqtt://127.0.0.1:{server.getsockname()[1]}"), timeout=0.5)
    finally:
        server.close()
