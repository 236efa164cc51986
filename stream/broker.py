"""The embedded MQTT broker (amqtt), for a machine with no broker of its own.

``harstream broker`` runs it in the foreground; ``harstream demo`` and the tests start it as a child
process when nothing answers at the broker's address.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import subprocess
import sys
import time

from stream.mqtt import BrokerURL, mqtt_answers

__all__ = ["run_broker", "check_address", "EmbeddedBroker"]

log = logging.getLogger(__name__)


def broker_config(host: str, port: int, allow_anonymous: bool = True) -> dict:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": allow_anonymous},
        },
    }


def check_address(host: str, port: int) -> None:
    """Raise OSError (one line) when nothing can listen on ``host:port``, e.g. another broker holds it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            probe.bind(address)
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None


def _cannot_listen(host: str, port: int, exc: Exception) -> OSError:
    """One line for an address nothing can listen on (``exc``: the OSError, or what wraps it)."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(cause, OSError):
        reason = "address already in use" if cause.errno == errno.EADDRINUSE else (cause.strerror or str(cause))
    else:
        reason = str(exc)
    return OSError(f"cannot listen on mqtt://{host}:{port}: {reason}")


def run_broker(host: str = "127.0.0.1", port: int = 1883) -> None:
    """Run the embedded broker until SIGINT or SIGTERM; OSError (one line) when it cannot listen."""
    from amqtt.broker import Broker

    check_address(host, port)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def main() -> None:
        broker = Broker(broker_config(host, port))
        amqtt_log = logging.getLogger("amqtt.broker")
        amqtt_log.setLevel(logging.CRITICAL)  # a failed start is reported once, below, not as 2 tracebacks
        try:
            await broker.start()
        except Exception as exc:  # amqtt's BrokerError, e.g. the address taken since the check
            raise _cannot_listen(host, port, exc) from None
        finally:
            amqtt_log.setLevel(logging.WARNING)
        log.info("embedded broker (amqtt) listening on mqtt://%s:%d", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


class EmbeddedBroker:
    """The embedded broker in a child process; a context manager that waits until it answers."""

    def __init__(self, url: BrokerURL) -> None:
        self.url = url
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        cmd = [sys.executable, "-m", "stream.cli", "broker", "--broker", f"mqtt://{self.url.host}:{self.url.port}"]
        self.process = subprocess.Popen(cmd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded broker exited with status {self.process.returncode}")
            if mqtt_answers(self.url, timeout=1.0):  # a whole MQTT connection: amqtt logs a bare TCP one as an error
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"embedded broker did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
