"""MQTT connection settings and paho clients configured the same way everywhere.

``--broker mqtt://[user:pass@]host:port`` (or ``mqtts://`` for TLS) on every command; the environment
variable ``HARSTREAM_BROKER`` sets the default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "BufferedClient",
    "ENV_MQTT_READ",
    "READ_MODES",
    "NoMQTT5",
    "PROTOCOLS",
    "BrokerURL",
    "DEFAULT_BROKER",
    "ENV_BROKER",
    "broker_answers",
    "mqtt_answers",
    "speaks_mqtt5",
    "client_class",
    "connect",
    "default_broker",
    "topic",
]

log = logging.getLogger(__name__)

ENV_BROKER = "HARSTREAM_BROKER"
PROTOCOLS = ("3.1.1", "5", "auto")  # "auto": MQTT 5, or 3.1.1 when the broker closes a v5 CONNECT unanswered
SESSION_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5 Session Expiry Interval: a persistent session, as in 3.1.1
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


# How paho's clients read and decode (one process, one way; measured in docs/throughput.md):
#   "fast" (default): BufferedClient and MQTT 5 PUBLISH decoding without Properties when there are none;
#   "buffered": BufferedClient only; "plain": paho as it is.
ENV_MQTT_READ = "HARSTREAM_MQTT_READ"
READ_MODES = ("fast", "buffered", "plain")
READ_CHUNK = 64 * 1024  # bytes asked of the socket per recv() by BufferedClient
PAUSE_SLICE = 0.002  # seconds BufferedClient waits per loop while its owner asks it not to read


def _buffering_applies() -> bool:
    """Whether BufferedClient's override fits the installed paho: the private methods it relies on
    exist, and paho does not read ahead by itself (its development branch has ``_sock_recv_read_ahead``)."""
    return (all(callable(getattr(mqtt.Client, name, None))
                for name in ("_sock_recv", "_packet_read", "_loop_rc_handle", "_packet_queue",
                             "_call_socket_register_write", "_handle_on_message"))
            and hasattr(mqtt, "sockpair_data") and not hasattr(mqtt.Client, "_sock_recv_read_ahead"))


class BufferedClient(mqtt.Client):
    """paho's Client, reading the socket up to 64 kB per ``recv()`` and handling every whole packet
    that is already buffered before it goes back to ``select()``.

    Plain paho reads one packet per ``select()``, with one ``recv()`` for the fixed header byte, one
    per remaining-length byte and one (or more) for the rest: three or four system calls and one
    ``select()`` per message. Here ``_sock_recv`` (the one place paho reads the socket) serves those
    reads from a buffer filled 64 kB at a time, and ``loop_read`` goes on calling paho's own
    ``_packet_read`` while a whole packet is buffered, so that no buffered packet waits for the next
    ``select()`` (which would not see it). Only whole packets are drained: the loop never reads the
    socket again, so writes, keep-alive and the wake-up socket get their turn after at most 64 kB.
    Invariant: bytes stay buffered only at a packet boundary of paho's parser (``_packet_read``
    returns mid-packet only when a read found nothing, i.e. the buffer is empty).

    TLS: an ``ssl.SSLSocket`` returns at most one record per ``recv()``; paho's ``_loop`` skips the
    ``select()`` wait while the socket has ``pending()`` decrypted bytes, as before; what this buffer
    holds between loops is at most one partial packet, whose rest is still in the kernel or in the
    TLS layer, where ``select()`` or ``pending()`` sees it. The buffer is emptied at every
    ``reconnect()`` (a new socket).

    Writing: one wake-up byte for the network thread per burst of queued packets, not per packet
    (``_packet_queue``); dispatch: no topic matching when no per-topic callback is registered
    (``_handle_on_message``); both below.

    Relies on paho's private ``_sock_recv``, ``_packet_read``, ``_loop_rc_handle``, ``_packet_queue``
    and ``_handle_on_message`` and on the public ``loop_read``, ``loop_write`` and ``reconnect``: tested with
    paho-mqtt 2.2.0 (tests/test_mqtt_read.py);
    pyproject pins ``>=2.0,<2.3``. ``connect()`` uses plain paho where those methods are absent, where
    paho reads ahead by itself (``_sock_recv_read_ahead``, on paho's development branch), or with
    ``HARSTREAM_MQTT_READ=plain``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._read_buf = b""
        self._read_pos = 0
        # Back-pressure: while ``read_paused()`` is true nothing more is read (the backlog waits in the
        # socket and then at the broker, as TCP flow control holds it there), but paho's loop goes on
        # writing (publishes, acknowledgements, keep-alive pings) every PAUSE_SLICE. Blocking in
        # ``on_message`` instead would stop the writes too, and the broker cuts a client that sends
        # nothing for 1.5 keep-alives.
        self.read_paused: Callable[[], bool] | None = None
        self.read_pauses = 0  # loops spent paused
        # True from a wake-up byte written to paho's socket pair until the network thread's next
        # loop_write(), which writes everything queued by then: later packets need no byte of their own
        self._wake_pending = False
        self._wake_held = False  # inside batched_writes(): packets queued without a wake-up byte
        self._wake_skipped = False

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._read_buf, self._read_pos
        if pos < len(buf):
            end = min(pos + bufsize, len(buf))
            self._read_pos = end
            return buf[pos:end]
        data = super()._sock_recv(READ_CHUNK)  # raises as paho's does (BlockingIOError, OSError, ...)
        if len(data) <= bufsize:
            self._read_buf, self._read_pos = b"", 0
            return data
        self._read_buf, self._read_pos = data, bufsize
        return data[:bufsize]

    def _whole_packet_buffered(self) -> bool:
        buf, pos = self._read_buf, self._read_pos
        have = len(buf) - pos
        length, mult = 0, 1
        for i in range(1, 5):  # the remaining length: 1 to 4 bytes after the fixed header byte
            if i >= have:
                return False
            byte = buf[pos + i]
            length += (byte & 127) * mult
            if not byte & 128:
                return 1 + i + length <= have
            mult *= 128
        return True  # a malformed length: let paho's parser refuse it

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        paused = self.read_paused
        if paused is not None and paused():
            self.read_pauses += 1
            time.sleep(PAUSE_SLICE)  # select() sees the socket readable at once: no busy loop
            return mqtt.MQTT_ERR_SUCCESS
        rc = super().loop_read(max_packets)
        while (rc == mqtt.MQTT_ERR_SUCCESS and self._sock is not None and self._whole_packet_buffered()
               and not (paused is not None and paused())):
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTT_ERR_AGAIN:
                return mqtt.MQTT_ERR_SUCCESS
        return rc

    def reconnect(self) -> mqtt.MQTTErrorCode:
        self._read_buf, self._read_pos = b"", 0  # nothing of the old connection reaches the new one
        return super().reconnect()

    # -- writing: one wake-up of the network thread per burst of packets, not one per packet --------
    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> mqtt.MQTTErrorCode:
        """paho 2.2's ``_packet_queue``, but the byte that breaks the network thread out of select()
        is written only when none is pending since its last ``loop_write``.

        paho writes that byte for every packet queued: a system call that gives up the GIL, for every
        prediction the service thread publishes, and a select() wake-up for the network thread. py-spy
        at 3,000 devices found the service thread in that call for 10% of its busy samples (waiting to
        get the GIL back). Skipping it is safe: a packet queued while a byte is pending is in the
        queue before the network thread's next ``loop_write`` clears the flag and writes the queue.
        """
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": info})
        if self._wake_held:
            self._wake_skipped = True
        else:
            self._wake()
        if (self._thread is None and self._on_socket_register_write is None
                and self._in_callback_mutex.acquire(False)):
            self._in_callback_mutex.release()
            return self.loop_write()
        self._call_socket_register_write()
        return mqtt.MQTT_ERR_SUCCESS

    @contextlib.contextmanager
    def batched_writes(self):
        """Queue the packets published inside the block without waking the network thread; wake it
        once at the end. On two cores the network thread, idle in select(), wakes within microseconds
        of each byte and takes the GIL, one handover per prediction; a cycle's predictions go out
        together instead. Packets the network thread queues meanwhile it writes itself (its select()
        waits for the socket to be writable while anything is queued)."""
        self._wake_held = True
        try:
            yield self
        finally:
            self._wake_held = False
            if self._wake_skipped:
                self._wake_skipped = False
                self._wake()

    def _wake(self) -> None:
        """Break the network thread out of select(), unless a wake-up byte is pending already."""
        if self._sockpairW is not None and not self._wake_pending:
            self._wake_pending = True
            try:
                self._sockpairW.send(mqtt.sockpair_data)
            except BlockingIOError:
                pass  # the pipe is full of wake-up bytes already

    def loop_write(self) -> mqtt.MQTTErrorCode:
        self._wake_pending = False  # before writing: whatever is queued from now on wakes us again
        return super().loop_write()

    def loop_start(self) -> mqtt.MQTTErrorCode:
        rc = super().loop_start()
        self._wake_pending = False  # a new socket pair holds no byte (after it exists: at worst one wake too many)
        return rc

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """paho's dispatch, without asking its topic matcher when no per-topic callback is registered.

        paho 2.2 matches every incoming topic with ``MQTTMatcher.iter_match``, which builds a recursive
        closure per call: a reference cycle per message, freed only by the cyclic garbage collector
        (measured: 6,000 cycles a second at 3,000 devices; they filled the young generations and brought
        a full collection, 130 ms with the consumer's objects, about every 10 s). With
        ``message_callback_add`` in use, or a paho without these internals, paho's own method runs.
        """
        root = getattr(getattr(self, "_on_message_filtered", None), "_root", None)
        if root is None or getattr(root, "_children", True):
            super()._handle_on_message(message)
            return
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:  # as paho: logged, raised unless exceptions are suppressed
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise


def batched_writes(client: mqtt.Client):
    """``client.batched_writes()`` for a BufferedClient, else a block that changes nothing."""
    held = getattr(client, "batched_writes", None)
    return held() if held is not None else contextlib.nullcontext()


# -- MQTT 5 PUBLISH without properties, decoded without building a Properties object ------------
try:  # paho 2.2 decodes packets in paho.mqtt._packet; 2.0 and 2.1 inside Client._handle_publish
    from paho.mqtt import _packet as _paho_packet
    _PAHO_DECODE_PUBLISH = _paho_packet.decode_publish
    _PublishPacket = _paho_packet.PublishPacket
except (ImportError, AttributeError):
    _paho_packet = _PAHO_DECODE_PUBLISH = _PublishPacket = None
# a fresh empty Properties(PUBLISH) holds only paho's lookup tables (never changed after __init__): an
# empty one is a copy of this __dict__, shared tables and all, as copy.copy() would make it
_EMPTY_PUBLISH_PROPERTIES = Properties(PacketTypes.PUBLISH).__dict__


def _decode_publish(header: int, packet: bytes | bytearray, protocol: int):
    """paho 2.2's ``_packet.decode_publish``, minus its cost for an MQTT 5 PUBLISH without properties
    (property length 0: what a broker sends to a subscription without identifiers, aliases or user
    properties): ``Properties(PUBLISH)`` and its ``unpack()`` take about 20 µs per message in paho,
    two thirds of decoding it. The result is the same ``PublishPacket`` (``bytes`` topic and payload, an
    empty ``Properties``); any other packet goes to paho's decoder."""
    if protocol == mqtt.MQTTv5 and len(packet) > 2:
        slen = (packet[0] << 8) | packet[1]
        at = 2 + slen + (2 if header & 0x06 else 0)  # the property length, after the topic and the mid
        if slen and len(packet) > at and packet[at] == 0:
            properties = Properties.__new__(Properties)
            properties.__dict__.update(_EMPTY_PUBLISH_PROPERTIES)
            mid = ((packet[2 + slen] << 8) | packet[3 + slen]) if header & 0x06 else 0
            return _PublishPacket(dup=bool(header & 0x08), qos=(header & 0x06) >> 1,
                                  retain=bool(header & 0x01), topic=bytes(packet[2:2 + slen]), mid=mid,
                                  properties=properties, payload=bytes(packet[at + 1:]))
    return _PAHO_DECODE_PUBLISH(header, packet, protocol)


def _fast_publish_decode(on: bool) -> bool:
    """Install (or remove) ``_decode_publish`` in paho 2.2's ``_packet`` module: for every client of the
    process, as paho looks it up there at each PUBLISH. False where paho has no such module function."""
    if _paho_packet is None or _paho_packet.decode_publish not in (_PAHO_DECODE_PUBLISH, _decode_publish):
        return False
    _paho_packet.decode_publish = _decode_publish if on else _PAHO_DECODE_PUBLISH
    return on


def read_mode() -> str:
    mode = (os.environ.get(ENV_MQTT_READ) or "fast").strip().lower()
    if mode not in READ_MODES:
        raise ValueError(f"Invalid {ENV_MQTT_READ}={mode!r}: one of {', '.join(READ_MODES)}")
    return mode


def client_class() -> type[mqtt.Client]:
    """The paho Client class ``connect()`` makes, after setting up decoding, as ``HARSTREAM_MQTT_READ``
    says (``fast`` by default, see ``READ_MODES``): BufferedClient unless ``plain`` or the installed paho
    does not fit it; the PUBLISH fast path with ``fast`` where paho 2.2 has ``_packet.decode_publish``."""
    mode = read_mode()
    _fast_publish_decode(mode == "fast")
    return BufferedClient if mode != "plain" and _buffering_applies() else mqtt.Client


def default_broker() -> str:
    return os.environ.get(ENV_BROKER) or DEFAULT_BROKER


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str, ca_file: str | None = None) -> BrokerURL:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"Invalid broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"Invalid broker URL {url!r}: bad port") from None
        if not parts.hostname:
            raise ValueError(f"Invalid broker URL {url!r}: no host")
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_file=ca_file,
        )

    def __str__(self) -> str:
        auth = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"


def topic(prefix: str, device: str, kind: str) -> str:
    return f"{prefix}/{device}/{kind}"


def broker_answers(url: BrokerURL, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the broker's address."""
    try:
        with socket.create_connection((url.host, url.port), timeout=timeout):
            return True
    except OSError:
        return False


def _probe(url: BrokerURL, protocol: int) -> mqtt.Client:
    """A throwaway plain paho client for ``url`` (its credentials and TLS), to ask the broker something."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
                         protocol=protocol)
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set(ca_certs=url.ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return client


def mqtt_answers(url: BrokerURL, timeout: float = 2.0) -> bool:
    """Whether an MQTT broker answers at ``url``: a throwaway clean MQTT 3.1.1 connection gets a CONNACK (any
    reason code: refused credentials are still a broker). Unlike ``broker_answers``, it tells a broker from
    anything else on the port, and a broker sees a whole connection, not a bare TCP one (amqtt logs those as
    an ERROR, "No data to decode MQTT packet fixed header"). A broker that closes a 3.1.1 connection unanswered
    (one that speaks MQTT 5 only may) is asked again in MQTT 5."""
    deadline = time.monotonic() + timeout
    return _connack(url, mqtt.MQTTv311, deadline) or (time.monotonic() < deadline
                                                       and _connack(url, mqtt.MQTTv5, deadline))


def _connack(url: BrokerURL, protocol: int, deadline: float) -> bool:
    """Whether a throwaway connection in ``protocol`` gets a CONNACK before ``deadline``."""
    client = _probe(url, protocol)
    answered: list[bool] = []
    client.on_connect = lambda *args: answered.append(True)
    try:
        client.connect(url.host, url.port, keepalive=10)
        while not answered and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break  # the other end closed the connection
        return bool(answered)
    except (OSError, ValueError):
        return False
    finally:
        client.disconnect()


def speaks_mqtt5(url: BrokerURL, timeout: float = 5.0) -> bool:
    """Whether the broker accepts an MQTT 5 connection (a throwaway clean one, without a will).

    A 3.1.1-only broker answers it with "unsupported protocol version" (amqtt does) or closes the
    connection; other refusals (credentials, say) are left to the real connection to report.
    """
    client = _probe(url, mqtt.MQTTv5)
    answer: list[bool] = []
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        answer.append(not (reason_code.is_failure and "protocol version" in str(reason_code).lower()))
        done.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not answer:
            answer.append(False)
        done.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    try:
        client.connect(url.host, url.port, keepalive=30, clean_start=True)
    except OSError:
        return True  # nothing answers: the real connection will say so
    client.loop_start()
    try:
        done.wait(timeout)
        return answer[0] if answer else True
    finally:
        client.disconnect()
        client.loop_stop()


def connect(
    url: BrokerURL,
    name: str,
    *,
    client_id: str | None = None,
    will: tuple[str, bytes] | None = None,
    subscriptions: list[tuple[str, int]] | None = None,
    clean_session: bool = True,
    on_message=None,
    on_connected=None,
    timeout: float = 10.0,
    start_loop: bool = True,
    protocol: str = "3.1.1",
    manual_ack: bool = False,
    receive_maximum: int | None = None,
    read_paused: Callable[[], bool] | None = None,
) -> mqtt.Client:
    """A connected paho client whose ``on_connect`` (re)subscribes; raises ConnectionError on failure.

    ``will`` is a retained last will (topic, payload). ``subscriptions`` is read at every (re)connection: what
    the caller takes out of the list is not subscribed again. The network loop runs in paho's thread.
    ``protocol`` is ``"3.1.1"``, ``"5"`` or ``"auto"`` (MQTT 5 if ``speaks_mqtt5``, else 3.1.1: amqtt
    speaks 3.1.1 only); ``client.protocol_name`` tells which one is in use; a broker that refuses
    MQTT 5 raises ``NoMQTT5``. Under MQTT 5 a persistent session (``clean_session=False``) never
    expires and ``receive_maximum`` (1..65535) is the Receive Maximum: how many QoS 1 messages the
    broker may send us unacknowledged. Mosquitto 2.0 honours it above its ``max_inflight_messages``
    (measured: docs/faults.md), which binds 3.1.1 clients only. ``manual_ack``: paho sends no PUBACK
    by itself; the caller calls ``client.ack(mid, qos)``. ``on_connected(client)`` runs in paho's
    thread after each (re)connection, after the subscriptions are sent. ``read_paused()``: while true,
    a BufferedClient reads nothing more (back-pressure; plain paho ignores it).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Invalid MQTT protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    if protocol == "auto":
        protocol = "5" if speaks_mqtt5(url) else "3.1.1"
    v5 = protocol == "5"
    client_id = client_id or f"{name}-{uuid.uuid4().hex[:8]}"
    client_cls = client_class()
    if v5:
        client = client_cls(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                             manual_ack=manual_ack)
    else:
        client = client_cls(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            manual_ack=manual_ack,
        )
    client.protocol_name = "5" if v5 else "3.1.1"
    if read_paused is not None and isinstance(client, BufferedClient):
        client.read_paused = read_paused
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set(ca_certs=url.ca_file, cert_reqs=ssl.CERT_REQUIRED)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    connected = threading.Event()
    failure: list[str] = []
    answered: list[bool] = []

    def on_connect(client, userdata, flags, reason_code, properties):
        answered.append(True)
        if v5 and reason_code.is_failure and "protocol version" in str(reason_code).lower():
            failure.append(str(reason_code))
            answered.clear()  # as good as unanswered: a 3.1.1 broker
            connected.set()
            return
        if reason_code.is_failure:
            failure.append(str(reason_code))
            connected.set()
            return
        for sub_topic, qos in subscriptions or []:
            client.subscribe(sub_topic, qos)
        if on_connected is not None:
            on_connected(client)
        connected.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not answered and not connected.is_set():
            failure.append(f"connection closed before CONNACK ({reason_code})")
            connected.set()
            return
        if reason_code != 0:
            log.warning("%s: disconnected from %s (%s), reconnecting", name, url, reason_code)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if on_message is not None:
        client.on_message = _subscribed_only(on_message, subscriptions or [], manual_ack)
    try:
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if not clean_session:
                props.SessionExpiryInterval = SESSION_NEVER_EXPIRES
            if receive_maximum is not None:
                props.ReceiveMaximum = max(1, min(int(receive_maximum), 65535))
            # clean_start as a bool: the same on every reconnection (paho's default cleans the first only)
            client.connect(url.host, url.port, keepalive=30, clean_start=clean_session, properties=props)
        else:
            client.connect(url.host, url.port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"cannot connect to MQTT broker at {url}: {exc}") from None
    if start_loop:
        client.loop_start()
        if not connected.wait(timeout):
            client.loop_stop()
            raise ConnectionError(f"MQTT broker at {url} did not answer within {timeout:.0f} s")
        if failure:
            client.loop_stop()
            if v5 and not answered:
                raise NoMQTT5(failure[0])
            raise ConnectionError(f"MQTT broker at {url} refused the connection: {failure[0]}")
    return client


def _subscribed_only(on_message, subscriptions: list[tuple[str, int]], manual_ack: bool):
    """``on_message`` for the messages of our own subscriptions only: amqtt (0.12, the embedded broker) sends
    a connecting client the retained messages matching any subscription in the broker, other clients'
    included. Such a message is dropped (acknowledged first under ``manual_ack``, or the broker holds it).
    Without ``subscriptions`` (a caller that subscribes by itself) every message is passed on."""
    if not subscriptions:
        return on_message
    # the topic filters, without $share/<group>/ (a retained message is never sent through a shared one)
    filters = [t.split("/", 2)[2] if t.startswith("$share/") else t for t, _ in subscriptions]

    def handler(client, userdata, message) -> None:
        if message.retain and not any(mqtt.topic_matches_sub(f, message.topic) for f in filters):
            if manual_ack and message.qos:
                client.ack(message.mid, message.qos)
            return
        on_message(client, userdata, message)

    return handler


class NoMQTT5(ConnectionError):
    """The broker closed an MQTT 5 connection without a CONNACK (it speaks 3.1.1 only)."""
