"""The shipped Mosquitto configuration (deploy/mosquitto/) against real clients.

A private Mosquitto on free ports runs deploy/mosquitto/mosquitto.conf (paths and ports rewritten)
with the shipped ACL, a password file made with mosquitto_passwd and, when openssl is present, a
TLS listener with a certificate from a throwaway CA. Denied publishes are silently dropped by the
broker, so each check publishes a marker after them from the same client: once the marker has
arrived, anything that was going to arrive has.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from stream.mqtt import BrokerURL, broker_answers, connect
from tests.helpers import make_certs

pytestmark = pytest.mark.broker

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
SHIPPED = "/etc/mosquitto/harstream"


def _tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/usr/local/sbin")
                                       if (p := Path(d) / name).exists()), None)


MOSQUITTO, MOSQUITTO_PASSWD, OPENSSL = _tool("mosquitto"), _tool("mosquitto_passwd"), _tool("openssl")
if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
    pytest.skip("the mosquitto and mosquitto_passwd binaries are not installed", allow_module_level=True)

PASSWORDS = {"dev-a": "a-secret", "dev-b": "b-secret", "_consumer": "c-secret", "_operator": "p@ss:w/rd#1 %"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _render(directory: Path, ports: dict[int, int], tls: bool) -> str:
    """The shipped mosquitto.conf with this test's paths and ports.

    The WebSockets listener is left out: some Mosquitto builds cannot open one (this sandbox's
    cannot), and it shares the TLS listener's settings, which are tested.
    """
    out, skipping = [], False
    for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        words = line.split()
        if words[:1] == ["listener"]:
            skipping = int(words[1]) == 8884 or (int(words[1]) == 8883 and not tls)
            if not skipping:
                line = f"listener {ports[int(words[1])]} 127.0.0.1"
        elif not line.strip():
            skipping = False
        if skipping:
            continue
        line = line.replace(f"{SHIPPED}/certs", str(directory)).replace(f"{SHIPPED}/acl", str(DEPLOY / "acl"))
        line = line.replace(SHIPPED, str(directory)).replace("/var/lib/mosquitto/", f"{directory}/")
        out.append(line)
    # run as whoever runs the tests: as root, Mosquitto would otherwise switch to the mosquitto user
    out += [f"user {getpass.getuser()}", "log_dest stderr", "log_type error", "log_type warning"]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mosquitto")
    passwd = directory / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                       check=True, capture_output=True, timeout=30)
    tls = OPENSSL is not None
    if tls:
        make_certs(directory, OPENSSL, other_ca=True)
    ports = {1883: _free_port(), 8883: _free_port()}
    conf = directory / "mosquitto.conf"
    conf.write_text(_render(directory, ports, tls))
    log = (directory / "mosquitto.log").open("w")
    process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not broker_answers(BrokerURL.parse(f"mqtt://127.0.0.1:{ports[1883]}"), timeout=0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start:\n{(directory / 'mosquitto.log').read_text()}")
            time.sleep(0.05)
        yield {"port": ports[1883], "tls_port": ports[8883] if tls else None, "dir": directory}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def url(broker, user: str | None, password: str | None = None, tls: bool = False, ca: Path | None = None):
    if password is None and user is not None:
        password = PASSWORDS[user]
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
    scheme, port = ("mqtts", broker["tls_port"]) if tls else ("mqtt", broker["port"])
    return BrokerURL.parse(f"{scheme}://{auth}127.0.0.1:{port}", ca_file=str(ca) if ca else None)


class Watcher:
    """A subscriber that records (topic, payload) and waits for a marker."""

    def __init__(self, broker_url: BrokerURL, filters: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._arrived = threading.Condition()
        self.client = connect(broker_url, "sec-watch", subscriptions=[(f, 1) for f in filters],
                              on_message=self._on_message)
        time.sleep(0.2)  # the SUBACK: subscriptions are sent from on_connect

    def _on_message(self, client, userdata, message) -> None:
        with self._arrived:
            self.messages.append((message.topic, message.payload))
            self._arrived.notify_all()

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: (topic, payload) in self.messages, timeout)

    def topics(self) -> set[str]:
        with self._arrived:
            return {t for t, _ in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(client, topics: list[str], marker: str) -> None:
    for t in topics:
        client.publish(t, b"x", qos=1).wait_for_publish(5)
    client.publish(marker, b"marker", qos=1).wait_for_publish(5)


@pytest.mark.parametrize("user, password", [("dev-a", "wrong"), ("nobody", "x"), (None, None), ("dev-a", "")])
def test_wrong_credentials_are_refused(broker, user, password):
    with pytest.raises(ConnectionError, match="refused"):
        connect(url(broker, user, password), "sec-test", timeout=5)


def test_a_device_publishes_only_its_own_samples_and_status(broker):
    operator = Watcher(url(broker, "_operator"), ["har/#"])
    consumer = Watcher(url(broker, "_consumer"),
                       ["sensorlogger/+", "sensorlogger-ios/+", "android/#", "csv/+"])
    device = connect(url(broker, "dev-a"), "sec-dev")
    try:
        allowed = ["har/dev-a/imu", "har/dev-a/status", "sensorlogger/dev-a", "sensorlogger-ios/dev-a",
                   "android/dev-a", "android/dev-a/accelerometer", "csv/dev-a"]
        denied = ["har/dev-b/imu", "har/dev-b/status", "har/dev-a/label", "har/dev-a/prediction",
                  "har/dev-a/drift", "har/_consumer/c1/status", "har/_consumer/c1/command",
                  "sensorlogger/dev-b", "android/dev-b", "android/dev-a/gyroscope", "csv/dev-b",
                  "elsewhere/dev-a"]
        publish_all(device, denied + allowed, marker="har/dev-a/status")
        assert operator.wait_for("har/dev-a/status", b"marker")
        assert consumer.wait_for("csv/dev-a", b"x")
        got = operator.topics() | consumer.topics()
        assert got >= set(allowed) - {"har/dev-a/status"}
        assert not got & set(denied), sorted(got & set(denied))
    finally:
        device.disconnect()
        device.loop_stop()
        operator.close()
        consumer.close()


def test_only_operators_label_and_only_the_consumer_predicts(broker):
    operator_watch = Watcher(url(broker, "_operator"), ["har/#"])
    operator = connect(url(broker, "_operator"), "sec-op")
    consumer = connect(url(broker, "_consumer"), "sec-consumer")
    try:
        publish_all(operator, ["har/dev-a/prediction", "har/dev-a/imu", "har/dev-a/label"],
                    marker="har/_consumer/c1/command")
        publish_all(consumer, ["har/dev-a/label", "har/dev-a/imu", "har/dev-a/prediction", "har/dev-a/drift"],
                    marker="har/_consumer/c1/status")
        assert operator_watch.wait_for("har/_consumer/c1/command", b"marker")
        assert operator_watch.wait_for("har/_consumer/c1/status", b"marker")
        got = {(t, p) for t, p in operator_watch.messages}
        assert {("har/dev-a/label", b"x"), ("har/dev-a/prediction", b"x"), ("har/dev-a/drift", b"x")} <= got
        assert ("har/dev-a/imu", b"x") not in got  # neither may pose as a device
        topics = [t for t, _ in operator_watch.messages]
        assert topics.count("har/dev-a/label") == 1  # the operator's, not the consumer's
        assert topics.count("har/dev-a/prediction") == 1  # the consumer's, not the operator's
    finally:
        for client in (operator, consumer):
            client.disconnect()
            client.loop_stop()
        operator_watch.close()


def test_a_device_reads_only_its_own_predictions(broker):
    device = Watcher(url(broker, "dev-a"), ["har/#", "#"])
    consumer = connect(url(broker, "_consumer"), "sec-consumer")
    try:
        publish_all(consumer, ["har/dev-b/prediction", "har/_consumer/c1/metrics"],
                    marker="har/dev-a/prediction")
        assert device.wait_for("har/dev-a/prediction", b"marker")
        assert device.topics() == {"har/dev-a/prediction"}
    finally:
        consumer.disconnect()
        consumer.loop_stop()
        device.close()


def test_tls_with_the_ca_file(broker):
    if broker["tls_port"] is None:
        pytest.skip("openssl is not installed: no TLS listener")
    ca = broker["dir"] / "ca.crt"
    watch = Watcher(url(broker, "_operator", tls=True, ca=ca), ["har/+/imu"])
    device = connect(url(broker, "dev-b", tls=True, ca=ca), "sec-tls")
    try:
        device.publish("har/dev-b/imu", b"over tls", qos=1).wait_for_publish(5)
        assert watch.wait_for("har/dev-b/imu", b"over tls")
    finally:
        device.disconnect()
        device.loop_stop()
        watch.close()
    with pytest.raises(ConnectionError):  # a certificate from another CA is not trusted
        connect(url(broker, "dev-b", tls=True, ca=broker["dir"] / "other-ca.crt"), "sec-tls", timeout=5)
    with pytest.raises(ConnectionError, match="refused"):  # TLS does not replace the password
        connect(url(broker, "dev-b", "wrong", tls=True, ca=ca), "sec-tls", timeout=5)
