"""The running dashboard in real headless Chromium, against a real broker.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` Python package; no
browser is downloaded (``playwright install`` is not used).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.broker]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def live_dashboard(broker_url):
    """A scripted feed of 3 devices and a consumer under a fresh prefix, and the dashboard serving it."""
    from dashboard.launch import start_dashboard
    from dashboard.scripted import ScriptedFeed
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    broker = f"mqtt://{broker_url.host}:{broker_url.port}"
    process, url = start_dashboard(broker, prefix, port=_free_port())
    feed = ScriptedFeed(broker_url, prefix, devices=3, seed=1).start()
    try:
        yield prefix, url, feed
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
        feed.stop()  # and no retained messages left behind on a shared broker


class Collector:
    def __init__(self, broker_url, topic):
        from stream.mqtt import connect
        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.client = connect(broker_url, "test-e2e-collect", subscriptions=[(topic, 1)], on_message=self._on)

    def _on(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, orjson.loads(msg.payload)))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def cell(page, text: str):
    """A dataframe cell: the grid draws on a canvas, and keeps cells in a hidden table for screen readers."""
    return page.locator("[data-testid='stDataFrame'] td[role='gridcell']", has_text=text).first


def test_overview_lists_devices_and_updates_without_reload(browser, live_dashboard, broker_url):
    prefix, url, feed = live_dashboard
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        for device in feed.devices:
            cell(page, device).wait_for(state="attached", timeout=30_000)
        page.get_by_text("Samples / s").first.wait_for(timeout=15_000)
        # a device that shows up later appears by itself: the live panel reruns every second
        from stream.mqtt import connect
        client = connect(broker_url, "test-e2e-late")
        late = f"late-{uuid.uuid4().hex[:4]}"
        client.publish(f"{prefix}/{late}/status", b"online", qos=1).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        cell(page, late).wait_for(state="attached", timeout=15_000)
    finally:
        page.close()


def test_device_page_draws_charts(browser, live_dashboard):
    prefix, url, feed = live_dashboard
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{url}/device?device={feed.devices[1]}")
        page.get_by_text("Accelerometer, last 10 s").wait_for(timeout=30_000)
        charts = page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg")
        charts.first.wait_for(timeout=30_000)
        assert charts.count() >= 2
        box = charts.first.bounding_box()
        assert box and box["width"] > 300 and box["height"] > 100
    finally:
        page.close()


def test_label_button_publishes_a_label(browser, live_dashboard, broker_url, needs_full_broker):
    prefix, url, feed = live_dashboard
    device = feed.devices[2]
    watch = Collector(broker_url, f"{prefix}/{device}/label")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{url}/label?device={device}")
        button = page.get_by_role("button", name="biceps curl", exact=True)
        button.wait_for(timeout=30_000)
        clicked = time.time()
        button.click()
        page.get_by_text("the broker acknowledged it").wait_for(timeout=15_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with watch.lock:
                sent = [body for topic, body in watch.messages if body.get("label") == "biceps_curl"
                        and topic == f"{prefix}/{device}/label"]
            if sent:
                break
            time.sleep(0.1)
        assert sent, watch.messages
        # the device clock: the scripted device's latest sample time, which runs with the wall clock here
        assert abs(sent[0]["t"] - clicked) < 5.0
    finally:
        page.close()
        watch.close()


def test_harstream_dashboard_runs_in_the_foreground_and_stops_on_ctrl_c(broker_url):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "dashboard", "--broker", f"mqtt://{broker_url.host}:{broker_url.port}",
         "--prefix", f"hartest{uuid.uuid4().hex[:8]}", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("harstream dashboard did not answer within 30 s")
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        assert process.wait(20) == 0
        assert f"http://127.0.0.1:{port}" in process.stdout.read().decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
