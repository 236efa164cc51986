"""Screenshots of every dashboard page, taken in headless Chromium: ``python docs/screenshots.py``.

Runs the dashboard against live data under a fresh topic prefix: the real ``harstream demo
--no-dashboard`` (simulator and consumer) when this build has both, else the dashboard's scripted feed
(dashboard.scripted, made-up numbers). Uses the broker at ``--broker`` when it answers, else starts the
embedded one. Needs Debian's ``chromium`` and the ``playwright`` Python package (no browser download).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script in docs/: make the project importable without installing it

from dashboard.launch import start_dashboard  # noqa: E402
from stream.mqtt import BrokerURL, broker_answers  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH, HEIGHT = 1400, 1000
FULL_HEIGHT = """() => Math.max(document.body.scrollHeight,
    ...[...document.querySelectorAll('[data-testid="stMain"], [data-testid="stMainBlockContainer"]')]
        .map(e => e.scrollHeight))"""
PAGES = [  # (file name, path under the dashboard's address, what shows that the page has data)
    ("overview", "", "[data-testid='stDataFrame']"),
    ("device", "device?device={device}", "[data-testid='stVegaLiteChart']"),
    ("drift", "drift", "[data-testid='stVegaLiteChart']"),
    ("model", "model", "[data-testid='stVegaLiteChart']"),
    ("label", "label?device={device}", "[data-testid='stButton']"),
]


def real_demo_available(model: str | None) -> bool:
    """Whether ``harstream demo`` can run here: a simulator and a model (given, or shipped)."""
    if importlib.util.find_spec("simulators.workout") is None:
        return False
    if model:
        return Path(model).is_file()
    try:
        from models.checkpoint import default_model_path
        return Path(default_model_path()).is_file()
    except (ImportError, OSError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--source", choices=("auto", "demo", "scripted"), default="auto",
                        help="auto: the real demo when this build can run it, else the scripted feed")
    parser.add_argument("--model", default=None, help="checkpoint for the demo's consumer (default: shipped)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of data before the first shot")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"screenshots: {CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    source = args.source
    if source == "auto":
        source = "demo" if real_demo_available(args.model) else "scripted"
    url = BrokerURL.parse(args.broker)
    prefix = f"harshots{uuid.uuid4().hex[:6]}"
    args.out.mkdir(parents=True, exist_ok=True)
    broker = feed = demo = dashboard = None
    try:
        if not broker_answers(url):
            from stream.broker import EmbeddedBroker
            broker = EmbeddedBroker(url).start()
        # the dashboard first: it keeps what it hears from then on
        dashboard, address = start_dashboard(args.broker, prefix, port=8599)
        print(f"screenshots: {source} feed under prefix {prefix}, dashboard at {address}", flush=True)
        if source == "demo":
            command = [sys.executable, "-m", "stream.cli", "demo", "--no-dashboard", "--broker", args.broker,
                       "--prefix", prefix, "--devices", "4"] + (["--model", args.model] if args.model else [])
            demo = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True)
            device = "sim-000"
        else:
            from dashboard.scripted import ScriptedFeed
            feed = ScriptedFeed(url, prefix, devices=4).start()
            device = feed.devices[-1]  # the one whose confidence drifts
        time.sleep(args.warmup if args.warmup is not None else (40.0 if source == "demo" else 6.0))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            for name, path, ready in PAGES:
                page.goto(f"{address}/{path.format(device=device)}")
                page.wait_for_selector(ready, timeout=30_000)
                page.wait_for_timeout(2500)  # let charts draw and a live refresh or two go by
                # Streamlit scrolls inside its main block, not the page: grow the window to fit it
                height = page.evaluate(FULL_HEIGHT)
                page.set_viewport_size({"width": WIDTH, "height": min(max(height, HEIGHT), 4000)})
                page.wait_for_timeout(1000)
                target = args.out / f"{name}.png"
                page.screenshot(path=str(target))
                page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
                print(f"screenshots: {target.relative_to(ROOT)}", flush=True)
            browser.close()
        return 0
    finally:
        for process in (dashboard, demo):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(20)
        if feed is not None:
            feed.stop()
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
