"""stream.mqtt.BufferedClient: paho reading the socket 64 kB at a time.

Against a scripted broker (a socket that answers CONNECT and then sends exactly the bytes a test
gives it, cut where the test says, over TCP or TLS): packets split anywhere arrive intact; a burst of
packets already read is delivered without waiting for more bytes; what a dropped connection left
in the buffer never reaches the next one. Against the real broker: many small messages and large
ones, in bursts, arrive intact and in order.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import random
import shutil
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.exception import MalformedPacket

from stream import mqtt as smqtt
from stream.mqtt import BrokerURL, BufferedClient, client_class, connect
from tests.helpers import make_certs


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, v5: bool = False) -> bytes:
    """An MQTT PUBLISH, QoS 0 (MQTT 5: with an empty property section)."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (b"\x00" if v5 else b"") + payload
    return b"\x30" + _varint(len(body)) + body


def _read_packet(conn: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data
    head = exactly(1)
    length, mult = 0, 1
    while True:
        byte = exactly(1)[0]
        length += (byte & 127) * mult
        mult *= 128
        if not byte & 128:
            break
    return head + exactly(length)


class ScriptedBroker:
    """Accepts connections, answers the CONNECT with a CONNACK; the test sends the rest."""

    def __init__(self, context: ssl.SSLContext | None = None, v5: bool = False) -> None:
        self.context = context
        self.connack = b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00"  # accepted
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: queue.Queue[socket.socket] = queue.Queue()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            self._open.append(conn)
            assert _read_packet(conn)[0] & 0xF0 == 0x10  # CONNECT
            conn.sendall(self.connack)
            self.connections.put(conn)

    def url(self, ca_file: str | None = None) -> BrokerURL:
        return BrokerURL("127.0.0.1", self.port, tls=self.context is not None, ca_file=ca_file)

    def close(self) -> None:
        self.listener.close()
        for conn in self._open:
            conn.close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()

    def on_message(self, client, userdata, message) -> None:
        with self.cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> list[tuple[str, bytes]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)


def _certs(directory: Path) -> tuple[Path, Path, Path] | None:
    """A throwaway CA and a certificate for 127.0.0.1, or None without openssl."""
    openssl = shutil.which("openssl")
    return None if openssl is None else make_certs(directory, openssl)


@pytest.fixture(params=[("tcp", "3.1.1"), ("tls", "3.1.1"), ("tcp", "5"), ("tls", "5")], ids="-".join)
def scripted(request, tmp_path, monkeypatch):
    """(scripted broker, a connected client of stream.mqtt.connect(), its inbox, a PUBLISH maker)."""
    monkeypatch.setenv(smqtt.ENV_MQTT_READ, "fast")
    transport, protocol = request.param
    context, ca = None, None
    if transport == "tls":
        certs = _certs(tmp_path)
        if certs is None:
            pytest.skip("openssl is not installed: no certificate for the TLS case")
        ca, crt, key = certs
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
    broker = ScriptedBroker(context, v5=protocol == "5")
    inbox = Inbox()
    client = connect(broker.url(str(ca) if ca else None), "read-test", on_message=inbox.on_message,
                     protocol=protocol)
    assert isinstance(client, BufferedClient)
    try:
        yield broker, client, inbox, lambda t, p: publish_packet(t, p, v5=protocol == "5")
    finally:
        client.disconnect()
        client.loop_stop()
        broker.close()


def test_packets_split_anywhere_arrive_intact(scripted):
    broker, client, inbox, packet = scripted
    conn = broker.connections.get(timeout=5)
    big = os.urandom(300_000)  # a 3-byte remaining length, several 64 kB reads
    packets = [("t/first", b"one"), ("t/big", big), ("t/empty", b""), ("t/last", b"x" * 200)]
    stream = b"".join(packet(t, p) for t, p in packets)
    first = len(packet(*packets[0]))
    # cut after the fixed header byte, inside the topic, at a packet boundary, after the next fixed
    # header byte, inside the multi-byte remaining length, inside the payload, and after one byte
    cuts = [1, 5, first, first + 1, first + 2, first + 70_000, first + 70_001, len(stream) - 150]
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        conn.sendall(stream[a:b])
        time.sleep(0.03)  # separate reads on the client's side
    assert inbox.wait_for(len(packets), 10) == packets


def test_a_burst_is_delivered_without_waiting_for_more_bytes(scripted):
    """Packets already in the buffer are handled before paho goes back to select() (which would not
    see them): here nothing else arrives after the burst."""
    broker, client, inbox, packet = scripted
    conn = broker.connections.get(timeout=5)
    packets = ([(f"t/d{i}", i.to_bytes(4, "big") * (i % 50)) for i in range(3000)]
               + [("t/big", os.urandom(200_000))]
               + [(f"t/e{i}", i.to_bytes(4, "big")) for i in range(500)])
    conn.sendall(b"".join(packet(t, p) for t, p in packets))
    assert inbox.wait_for(len(packets), 10) == packets


def test_a_new_connection_never_sees_what_the_old_one_left(scripted):
    """A protocol error closes the connection with a packet still buffered behind the bad one; after
    the reconnection only the new connection's bytes count."""
    broker, client, inbox, packet = scripted
    conn = broker.connections.get(timeout=5)
    conn.sendall(b"\xc0\x01\x00" + packet("t/stale", b"old connection"))  # PINGREQ with a body
    conn2 = broker.connections.get(timeout=15)  # paho reconnects after its 1 s delay
    conn2.sendall(packet("t/fresh", b"new connection"))
    assert inbox.wait_for(1, 10) == [("t/fresh", b"new connection")]
    time.sleep(0.2)
    assert inbox.messages == [("t/fresh", b"new connection")]


def test_delivering_messages_leaves_no_reference_cycles(scripted):
    """paho 2.2's topic matcher builds a reference cycle per message (a recursive closure); with no
    per-topic callback, BufferedClient hands messages to on_message without it, so the cyclic
    collector has next to nothing to do (plain paho: about 4 objects per message)."""
    broker, client, inbox, packet = scripted
    conn = broker.connections.get(timeout=5)
    gc.collect()
    gc.disable()
    try:
        conn.sendall(b"".join(packet(f"t/d{i}", b"x" * (i % 9)) for i in range(2000)))
        assert len(inbox.wait_for(2000, 10)) == 2000
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable < 500


def test_every_publish_leaves_promptly_with_one_wake_up_per_burst(scripted):
    """BufferedClient writes paho's wake-up byte only when none is pending: a lone publish on an idle
    connection, and every publish of bursts from two threads at once, must still reach the broker
    at once (paho's select() would otherwise sleep until its keep-alive timeout)."""
    broker, client, inbox, packet = scripted
    conn = broker.connections.get(timeout=5)
    conn.settimeout(5)
    for i in range(5):  # lone publishes, the network thread idle in select() between them
        time.sleep(0.1)
        sent = time.monotonic()
        client.publish(f"out/lone{i}", b"x")
        got = _read_packet(conn)
        assert time.monotonic() - sent < 0.5 and f"out/lone{i}".encode() in got

    def burst(name: str) -> None:
        for i in range(1500):
            client.publish(f"out/{name}", i.to_bytes(2, "big"))

    threads = [threading.Thread(target=burst, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = {"a": [], "b": []}
    for _ in range(3000):
        got = _read_packet(conn)
        name = "a" if b"out/a" in got else "b"
        seen[name].append(int.from_bytes(got[-2:], "big"))
    assert seen == {"a": list(range(1500)), "b": list(range(1500))}


def test_batched_writes_wake_the_network_thread_once_at_the_end(scripted):
    """Inside batched_writes() publishes are queued without a wake-up (on an idle connection nothing
    leaves); at the end of the block all of them leave at once, in order."""
    broker, client, inbox, packet = scripted
    conn = broker.connections.get(timeout=5)
    with smqtt.batched_writes(client):
        for i in range(50):
            client.publish("out/held", i.to_bytes(2, "big"))
        conn.settimeout(0.3)
        with pytest.raises(TimeoutError):
            conn.recv(1)  # the network thread sleeps in select(): nothing written yet
    conn.settimeout(5)
    sent = time.monotonic()
    got = [int.from_bytes(_read_packet(conn)[-2:], "big") for _ in range(50)]
    assert got == list(range(50)) and time.monotonic() - sent < 0.5
    assert isinstance(smqtt.batched_writes(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)),
                      contextlib.nullcontext)  # plain paho: a block that changes nothing


def test_per_topic_callbacks_still_take_their_messages(scripted):
    broker, client, inbox, packet = scripted
    conn = broker.connections.get(timeout=5)
    special: list[str] = []
    client.message_callback_add("t/special/+", lambda c, u, m: special.append(m.topic))
    conn.sendall(packet("t/special/a", b"1") + packet("t/other", b"2") + packet("t/special/b", b"3"))
    assert inbox.wait_for(1, 10) == [("t/other", b"2")]
    deadline = time.monotonic() + 5
    while len(special) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert special == ["t/special/a", "t/special/b"] and len(inbox.messages) == 1


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_many_small_and_large_messages_through_the_broker(broker_url, monkeypatch, protocol):
    monkeypatch.setenv(smqtt.ENV_MQTT_READ, "fast")
    prefix = f"readtest{os.urandom(3).hex()}"
    inbox = Inbox()
    try:
        sub = connect(broker_url, "read-sub", subscriptions=[(f"{prefix}/#", 1)], on_message=inbox.on_message,
                      protocol=protocol)
    except smqtt.NoMQTT5:
        pytest.skip("the broker speaks MQTT 3.1.1 only")
    pub = connect(broker_url, "read-pub")
    assert isinstance(sub, BufferedClient)
    time.sleep(0.3)  # the subscription is in place
    expected: list[tuple[str, bytes]] = []
    try:
        for burst in range(6):
            infos = []
            for i in range(500):  # a burst of small messages, then one large one
                n = burst * 1000 + i
                expected.append((f"{prefix}/d{n % 7}/imu", n.to_bytes(4, "big") * (n % 90)))
                infos.append(pub.publish(*expected[-1], qos=1))
            expected.append((f"{prefix}/big/imu", os.urandom(150_000 * (burst + 1))))
            infos.append(pub.publish(*expected[-1], qos=1))
            for info in infos:
                info.wait_for_publish(10)
            assert len(inbox.wait_for(len(expected), 20)) == len(expected)
        assert inbox.messages == expected
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()


def _publish_body(topic: bytes, qos: int, properties: bytes | None, payload: bytes) -> bytearray:
    """What follows the fixed header of a PUBLISH (``properties``: packed, or None under 3.1.1)."""
    return bytearray(struct.pack("!H", len(topic)) + topic + (struct.pack("!H", 4242) if qos else b"")
                     + (properties if properties is not None else b"") + payload)


def test_fast_publish_decoding_gives_what_paho_gives():
    if smqtt._PAHO_DECODE_PUBLISH is None:
        pytest.skip("this paho has no _packet.decode_publish")
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    rng = random.Random(8)
    with_props = Properties(PacketTypes.PUBLISH)
    with_props.UserProperty = ("k", "v")
    with_props.ContentType = "application/json"
    alias = Properties(PacketTypes.PUBLISH)
    alias.TopicAlias = 3
    cases = []
    for _ in range(300):
        header = 0x30 | rng.choice([0, 2]) | rng.choice([0, 1]) | rng.choice([0, 8])
        topic = rng.choice([b"har/d1/imu", b"a", "ü/x".encode(), b"t" * 300])
        payload = rng.randbytes(rng.choice([0, 1, 5, 1300, 70_000]))
        props = rng.choice([b"\x00", with_props.pack()])
        cases.append((header, _publish_body(topic, (header >> 1) & 3, props, payload), mqtt.MQTTv5))
        cases.append((header, _publish_body(topic, (header >> 1) & 3, None, payload), mqtt.MQTTv311))
    cases.append((0x30, _publish_body(b"", 0, alias.pack(), b"aliased"), mqtt.MQTTv5))  # empty topic
    for header, body, protocol in cases:
        ours = smqtt._decode_publish(header, body, protocol)
        paho = smqtt._PAHO_DECODE_PUBLISH(header, body, protocol)
        assert ours._replace(properties=None) == paho._replace(properties=None)
        assert type(ours.payload) is type(paho.payload) and type(ours.topic) is type(paho.topic)
        assert (ours.properties is None) == (paho.properties is None)
        if paho.properties is not None:
            assert str(ours.properties) == str(paho.properties)
            assert ours.properties.json() == paho.properties.json()
    for body in (bytearray(b"\x00\x09ab"), bytearray(b"\x00")):  # truncated: paho refuses it, as before
        with pytest.raises(MalformedPacket):
            smqtt._decode_publish(0x30, body, mqtt.MQTTv5)
    # an empty Properties made by the fast path is a Properties of its own
    a = smqtt._decode_publish(0x30, _publish_body(b"t", 0, b"\x00", b"x"), mqtt.MQTTv5).properties
    b = smqtt._decode_publish(0x30, _publish_body(b"t", 0, b"\x00", b"x"), mqtt.MQTTv5).properties
    a.UserProperty = ("only", "a")
    assert a.json() == {"UserProperty": [("only", "a")]} and b.isEmpty()


def test_read_modes(monkeypatch):
    from paho.mqtt import _packet
    monkeypatch.setenv(smqtt.ENV_MQTT_READ, "plain")
    assert client_class() is mqtt.Client
    assert _packet.decode_publish is smqtt._PAHO_DECODE_PUBLISH
    monkeypatch.setenv(smqtt.ENV_MQTT_READ, "buffered")
    assert client_class() is BufferedClient
    assert _packet.decode_publish is smqtt._PAHO_DECODE_PUBLISH
    monkeypatch.setenv(smqtt.ENV_MQTT_READ, "fast")
    assert client_class() is BufferedClient
    assert _packet.decode_publish is smqtt._decode_publish
    monkeypatch.delenv(smqtt.ENV_MQTT_READ)
    assert client_class() is BufferedClient  # fast: the default
    assert _packet.decode_publish is smqtt._decode_publish
    monkeypatch.setenv(smqtt.ENV_MQTT_READ, "buffered")
    monkeypatch.setattr(mqtt.Client, "_sock_recv_read_ahead", lambda self, n: b"", raising=False)
    assert client_class() is mqtt.Client  # paho reads ahead by itself
    monkeypatch.delattr(mqtt.Client, "_sock_recv_read_ahead")
    monkeypatch.delattr(mqtt.Client, "_packet_read")
    assert client_class() is mqtt.Client  # a paho without the private method the override calls
    monkeypatch.setenv(smqtt.ENV_MQTT_READ, "nonsense")
    with pytest.raises(ValueError):
        client_class()


@pytest.mark.broker
def test_a_paused_reader_leaves_the_backlog_at_the_broker_and_goes_on_writing(broker_url, monkeypatch):
    """While ``read_paused()`` is true nothing more is delivered, yet the client still publishes; once it
    is false everything published meanwhile arrives, in order, nothing lost (back-pressure, not drops)."""
    monkeypatch.setenv(smqtt.ENV_MQTT_READ, "fast")
    prefix = f"readtest{os.urandom(3).hex()}"
    inbox = Inbox()
    paused = threading.Event()
    sub = connect(broker_url, "read-sub", subscriptions=[(f"{prefix}/in", 1)], on_message=inbox.on_message,
                  read_paused=paused.is_set)
    echo = Inbox()
    watch = connect(broker_url, "read-watch", subscriptions=[(f"{prefix}/out", 1)],
                    on_message=echo.on_message)
    pub = connect(broker_url, "read-pub")
    assert isinstance(sub, BufferedClient)
    time.sleep(0.3)  # the subscriptions are in place
    try:
        paused.set()
        time.sleep(0.05)  # the loop in progress finishes its read
        sub_before = len(inbox.messages)
        expected = [(f"{prefix}/in", n.to_bytes(4, "big") * 50) for n in range(300)]
        for message in expected:
            pub.publish(*message, qos=1).wait_for_publish(10)
        sub.publish(f"{prefix}/out", b"still writing", qos=1)
        assert echo.wait_for(1, 10) == [(f"{prefix}/out", b"still writing")]
        time.sleep(0.5)
        assert len(inbox.messages) == sub_before == 0 and sub.read_pauses > 0
        paused.clear()
        assert inbox.wait_for(len(expected), 20) == expected
    finally:
        for c in (pub, sub, watch):
            c.disconnect()
            c.loop_stop()


@pytest.mark.parametrize("manual_ack", [False, True])
def test_connect_passes_on_only_retained_messages_of_its_own_subscriptions(embedded_broker, manual_ack):
    """amqtt (the embedded broker) sends a connecting client the retained messages that match any
    subscription in the broker, other clients' too: ``connect``'s ``on_message`` never sees them."""
    prefix = f"ro{os.getpid()}{int(manual_ack)}"
    pub = connect(embedded_broker, "retained-pub")
    other = connect(embedded_broker, "retained-other", subscriptions=[(f"{prefix}/theirs/#", 1)],
                    on_message=lambda c, u, m: None)
    got: queue.Queue = queue.Queue()
    client = None
    try:
        for topic in (f"{prefix}/theirs/a", f"{prefix}/mine/a"):
            pub.publish(topic, b"x", qos=1, retain=True).wait_for_publish(5)
        client = connect(embedded_broker, "retained-mine", subscriptions=[(f"{prefix}/mine/+", 1)],
                         on_message=lambda c, u, m: got.put((m.topic, m.retain)), manual_ack=manual_ack)
        assert got.get(timeout=5) == (f"{prefix}/mine/a", True)
        pub.publish(f"{prefix}/mine/b", b"y", qos=1).wait_for_publish(5)
        assert got.get(timeout=5) == (f"{prefix}/mine/b", False)
        time.sleep(0.3)
        assert got.empty()  # the other client's retained message never came through
    finally:
        for c in (pub, other, client):
            if c is not None:
                c.disconnect()
                c.loop_stop()
