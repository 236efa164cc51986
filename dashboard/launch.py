"""Starting the Streamlit server: in the foreground (``harstream dashboard``) or as a child (demo).

The app reads the broker and topic prefix from ``HARSTREAM_BROKER`` and ``HARSTREAM_PREFIX`` (and a CA
file from ``HARSTREAM_CA_FILE``), set here for the server process.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from stream.mqtt import ENV_BROKER, BrokerURL

__all__ = ["APP", "ENV_CA_FILE", "ENV_EVENTS", "ENV_PREFIX", "ENV_STARTED_BY", "run_dashboard", "start_dashboard",
           "streamlit_command"]

log = logging.getLogger(__name__)

ENV_PREFIX = "HARSTREAM_PREFIX"
ENV_CA_FILE = "HARSTREAM_CA_FILE"
ENV_EVENTS = "HARSTREAM_EVENTS"  # the consumer's event store (events.db in its --state-dir): history
ENV_STARTED_BY = "HARSTREAM_DASHBOARD_STARTED_BY"  # "demo" when harstream demo started it (and its consumer)

APP = Path(__file__).resolve().parent / "app.py"
ROOT = APP.parents[1]


def streamlit_command(address: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",  # nothing to watch in an installed app; saves a thread and CPU
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        # /_stcore/script-health-check runs the app once: the readiness check, and it starts the
        # shared MQTT subscriber before anyone opens a page, so history builds up from the start
        "--server.scriptHealthCheckEnabled", "true",
    ]


def _environment(broker: str, prefix: str, ca_file: str | None, state_dir: str | None = None,
                 started_by: str | None = None) -> dict[str, str]:
    BrokerURL.parse(broker, ca_file)  # a bad URL fails here, with a clear message, not in the browser
    env = dict(os.environ, **{ENV_BROKER: broker, ENV_PREFIX: prefix})
    env.pop(ENV_STARTED_BY, None)
    if started_by:
        env[ENV_STARTED_BY] = started_by
    if state_dir:
        env[ENV_EVENTS] = os.path.join(state_dir, "events.db")
    if ca_file:
        env[ENV_CA_FILE] = ca_file
    # the app imports dashboard.* and stream.*, also when harstream runs from a checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _port_free(address: str, port: int) -> bool:
    """Whether a server could listen on ``address:port`` now (a port whose last server closed moments ago,
    connections of it in TIME_WAIT, counts as free, as Streamlit takes it with SO_REUSEADDR too)."""
    with socket.socket() as s:
        if os.name == "posix":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _local(address: str) -> str:
    """Where this machine reaches a server listening on ``address``."""
    return "127.0.0.1" if address in ("0.0.0.0", "", "::") else address


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until the app has run once without error; raises RuntimeError if it fails or exits."""
    checks = ["/_stcore/script-health-check", "/_stcore/health"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the dashboard exited with status {process.returncode} before answering "
                               f"on {url}")
        try:
            wait = max(1.0, deadline - time.monotonic())  # the first run of the app takes a few seconds
            with urllib.request.urlopen(url + checks[0], timeout=wait) as answer:
                if answer.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and len(checks) > 1:  # a Streamlit without the script check: plain health
                checks.pop(0)
            elif exc.code == 503 and checks[0].endswith("script-health-check"):
                raise RuntimeError(f"the dashboard's app fails to run ({exc.read()[:80]!r}); "
                                   "see its log") from None
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        time.sleep(0.2)
    raise RuntimeError(f"the dashboard did not answer on {url} within {timeout:.0f} s")


def _warm_up(url: str, process: subprocess.Popen) -> None:
    try:
        wait_until_ready(url, process)
    except RuntimeError as exc:
        log.warning("%s", exc)


def run_dashboard(args) -> int:
    """Serve the dashboard in the foreground until Ctrl-C or SIGTERM (then exit status 0)."""
    env = _environment(args.broker, args.prefix, getattr(args, "ca_file", None), getattr(args, "state_dir", None))
    if not _port_free(args.address, args.port):  # Streamlit would exit after our address line, naming neither
        raise OSError(f"cannot listen on {args.address}:{args.port}: address already in use (another dashboard? "
                      "choose another --port)")
    print(f"dashboard: http://{_local(args.address)}:{args.port} (broker {BrokerURL.parse(args.broker)}, "
          f"prefix {args.prefix}); Ctrl-C stops it", flush=True)
    child = subprocess.Popen(streamlit_command(args.address, args.port), env=env, cwd=ROOT)
    stopping = []
    url = f"http://{_local(args.address)}:{args.port}"
    threading.Thread(target=_warm_up, args=(url, child), name="dashboard-warm-up", daemon=True).start()

    def stop(signum, frame) -> None:
        stopping.append(signum)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else code


def start_dashboard(broker: str, prefix: str = "har", address: str = "127.0.0.1", port: int = 8501,
                    ca_file: str | None = None, timeout: float = 30.0,
                    state_dir: str | None = None, started_by: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start the server as a child in its own session and wait until it answers; returns (process, url).

    Takes a free port when ``port`` is in use. Stop it with ``os.killpg(process.pid, signal.SIGTERM)``.
    ``started_by``: ``"demo"`` from ``harstream demo``, whose consumer it started: the Model page's advice
    names the demo's options then (``ENV_STARTED_BY``).
    """
    env = _environment(broker, prefix, ca_file, state_dir, started_by)
    if not _port_free(address, port):
        port = _free_port(address)
    url = f"http://{_local(address)}:{port}"
    process = subprocess.Popen(streamlit_command(address, port), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        wait_until_ready(url, process, timeout)
    except RuntimeError:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        raise
    return process, url
