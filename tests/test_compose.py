"""docker-compose.yml agrees with the code: every service runs a real ``harstream`` command with real
flags, ports and volumes match the code's defaults, and the Mosquitto configuration it mounts works.

No Docker engine is needed: the file is read with PyYAML and interpolated as Compose does; the
commands go through ``stream.cli.build_parser()``; the Mosquitto configuration runs on the local
``mosquitto`` binary when there is one.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
PASSWORDS = {"HARSTREAM_CONSUMER_PASSWORD": "consumer-pw", "HARSTREAM_OPERATOR_PASSWORD": "operator-pw",
             "HARSTREAM_SIMULATOR_PASSWORD": "simulator-pw"}
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else current
        if op in (":?", "?"):
            if unset:
                raise KeyError(f"{name}: {arg}")
            return current
        return current or ""
    return _VARIABLE.sub(sub, value)


def load(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), PASSWORDS if env is None else env)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load()


def harstream_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("harstream")}


def parse(service: dict, monkeypatch):
    """The service's command through the real parser, with the service's environment only."""
    from stream.cli import build_parser
    for name in [n for n in os.environ if n.startswith("HARSTREAM_")]:
        monkeypatch.delenv(name)
    for name, value in (service.get("environment") or {}).items():
        monkeypatch.setenv(name, str(value))
    command = service["command"]
    assert command[0] == "harstream", command
    return build_parser().parse_args(command[1:])


def ports(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of every mapping."""
    out = []
    for p in service.get("ports", []):
        host, host_port, container = p.removesuffix("/tcp").rsplit(":", 2)
        out.append((host, int(host_port), int(container)))
    return out


def test_it_parses_and_requires_the_passwords():
    with pytest.raises(KeyError, match="HARSTREAM_CONSUMER_PASSWORD"):
        load({})
    data = yaml.safe_load(COMPOSE.read_text())
    assert set(data["services"]) >= {"mosquitto", "consumer", "simulator", "dashboard", "emqx1", "emqx2",
                                     "redis", "replica"}


def test_every_service_runs_a_real_harstream_command(compose, monkeypatch):
    commands = {}
    for name, service in harstream_services(compose).items():
        args = parse(service, monkeypatch)
        commands[name] = args.command
        assert callable(args.func)
    assert commands == {"consumer": "consume", "simulator": "simulate", "dashboard": "dashboard",
                        "replica": "consume", "simulator-emqx": "simulate", "dashboard-emqx": "dashboard"}


def test_brokers_and_ports_agree_with_the_code(compose, monkeypatch):
    from stream.cli import build_parser
    from stream.mqtt import DEFAULT_BROKER, BrokerURL
    mqtt_port = BrokerURL.parse(DEFAULT_BROKER).port
    assert mqtt_port == 1883
    [(host, host_port, container)] = ports(compose["services"]["mosquitto"])
    assert (host, host_port, container) == ("127.0.0.1", 1883, mqtt_port)  # loopback unless asked
    dashboard_port = build_parser().parse_args(["dashboard"]).port
    assert dashboard_port == 8501
    for name, service in harstream_services(compose).items():
        args = parse(service, monkeypatch)
        url = BrokerURL.parse(args.broker)
        broker = compose["services"][url.host.split(".")[0]]  # emqx1.harstream.internal -> emqx1
        assert url.port == mqtt_port
        assert set(broker.get("profiles", [])) <= set(service.get("profiles", [])), name  # up together
        if "mosquitto" in url.host:  # the ACL's service accounts, with their passwords
            user = {"consume": "_consumer", "dashboard": "_operator", "simulate": "_simulator"}[args.command]
            assert url.username == user and url.password == PASSWORDS[f"HARSTREAM{user.upper()}_PASSWORD"]
        if args.command == "dashboard":
            assert args.address == "0.0.0.0" and args.port == dashboard_port  # reachable through the mapping
            [(host, _, container)] = ports(service)
            assert host == "127.0.0.1" and container == dashboard_port
            assert str(dashboard_port) in " ".join(service["healthcheck"]["test"])


def test_the_consumer_keeps_its_state_on_the_volume(compose, monkeypatch):
    service = compose["services"]["consumer"]
    args = parse(service, monkeypatch)
    volume, target = service["volumes"][0].split(":")[:2]
    assert volume in compose["volumes"] and args.state_dir == target
    assert args.id  # stable: the broker keeps its persistent session across restarts
    health = " ".join(service["healthcheck"]["test"])
    assert args.health_file and args.health_file in health
    # the image's harstream user owns the mount point, so the named volume is writable
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--home-dir {target}" in dockerfile and "USER harstream" in dockerfile


def test_replicas_share_a_group_and_a_state_store(compose, monkeypatch):
    service = compose["services"]["replica"]
    args = parse(service, monkeypatch)
    assert args.shared and args.state_store and args.health_file
    store = urlsplit(args.state_store)
    assert store.scheme == "redis" and store.hostname in compose["services"]
    assert "emqx" in service["profiles"] and "emqx" in compose["services"][store.hostname]["profiles"]
    assert args.state_dir is None  # replicas of one service would share it: state lives in Redis
    emqx = compose["services"]["emqx1"]["environment"]
    assert emqx["EMQX_MQTT__SHARED_SUBSCRIPTION_STRATEGY"] in ("hash_topic", "hash_clientid")
    assert compose["services"]["emqx2"]["environment"]["EMQX_NODE__NAME"] != emqx["EMQX_NODE__NAME"]
    assert int(service["deploy"]["replicas"]) >= 2


def test_every_published_port_binds_loopback_by_default(compose):
    for name, service in compose["services"].items():
        for host, _, _ in ports(service):
            assert host == "127.0.0.1", name


def test_mounted_files_exist_and_dependencies_are_services(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: {source}"
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"] and "healthcheck" in compose["services"][dependency]


def test_the_image_installs_cpu_torch_before_the_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    torch_line = dockerfile.index("download.pytorch.org/whl/cpu")
    assert torch_line < dockerfile.index('pip install ".[')
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.broker
def test_the_mounted_mosquitto_configuration_runs(compose, tmp_path):
    """deploy/compose/mosquitto.conf with deploy/mosquitto/acl on the local Mosquitto: the consumer's
    account takes a shared subscription, the simulator's publishes, a wrong password is refused, and
    the health check's command passes."""
    if not (shutil.which("mosquitto") and shutil.which("mosquitto_passwd") and shutil.which("mosquitto_sub")):
        pytest.skip("no mosquitto, mosquitto_passwd or mosquitto_sub on this machine")
    from stream.mqtt import BrokerURL, broker_answers, connect
    service = compose["services"]["mosquitto"]
    mounts = {target: ROOT / source for source, target in (v.split(":")[:2] for v in service["volumes"])
              if source.startswith("./")}
    port = _free_port()
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    for user in ("_consumer", "_operator", "_simulator"):
        variable = f"HARSTREAM{user.upper()}_PASSWORD"
        assert f'_passwd -b "$f" {user} "${variable}"' in service["command"][2]  # what the service runs
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, PASSWORDS[variable]], check=True)
    passwd.chmod(0o600)
    conf = mounts["/mosquitto/config/mosquitto.conf"].read_text()
    assert "acl_file /mosquitto/config/acl" in conf and "password_file /mosquitto/passwd/passwd" in conf
    conf = (conf.replace("/mosquitto/config/acl", str(mounts["/mosquitto/config/acl"]))
            .replace("/mosquitto/passwd/passwd", str(passwd))
            .replace("persistence true", "persistence false")
            .replace("listener 1883", f"listener {port} 127.0.0.1"))
    # started as root, Mosquitto would switch to its own user, which cannot read pytest's tmp_path
    (tmp_path / "mosquitto.conf").write_text(f"user {getpass.getuser()}\n{conf}")
    broker = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    clients = []
    try:
        deadline = time.monotonic() + 10
        while not broker_answers(BrokerURL.parse(f"mqtt://127.0.0.1:{port}"), 0.2):
            assert broker.poll() is None and time.monotonic() < deadline, broker.stdout.read().decode()
            time.sleep(0.05)
        got = []
        prefix = "har"
        device = f"compose-{uuid.uuid4().hex[:6]}"
        url = f"127.0.0.1:{port}"
        clients.append(connect(BrokerURL.parse(f"mqtt://_consumer:consumer-pw@{url}"), "test-consumer",
                               subscriptions=[(f"$share/harstream/{prefix}/+/imu", 1)],
                               on_message=lambda c, u, m: got.append(m.topic)))
        clients.append(connect(BrokerURL.parse(f"mqtt://_simulator:simulator-pw@{url}"), "test-sim"))
        time.sleep(0.3)
        clients[-1].publish(f"{prefix}/{device}/imu", b"{}", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [f"{prefix}/{device}/imu"]
        with pytest.raises(ConnectionError):
            connect(BrokerURL.parse(f"mqtt://_consumer:wrong@{url}"), "test-wrong", timeout=3)
        health = service["healthcheck"]["test"][1].replace("-p 1883", f"-p {port}")
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/usr/local/bin", **PASSWORDS}
        assert subprocess.run(["sh", "-c", health], env=env, timeout=10).returncode == 0
        env["HARSTREAM_OPERATOR_PASSWORD"] = "wrong"
        assert subprocess.run(["sh", "-c", health], env=env, timeout=10, capture_output=True).returncode != 0
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        broker.terminate()
        broker.wait(10)


def test_docker_compose_accepts_it(tmp_path):
    """``docker compose config`` where Compose v2 is installed (no engine needed)."""
    try:
        answer = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pytest.skip("docker is not installed")
    if answer.returncode != 0:
        pytest.skip("the Docker Compose v2 plugin is not installed")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", **PASSWORDS}
    for profile in ([], ["--profile", "emqx"]):
        result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), *profile, "config", "-q"], env=env,
                                capture_output=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr.decode()
