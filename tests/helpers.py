"""Helpers shared by the tests that talk to a broker."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import orjson


def wait(predicate, timeout: float = 20.0) -> bool:
    """Poll ``predicate`` every 50 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def imu(seq: int, t0: float, n: int = 10, rate: float = 50.0) -> bytes:
    """A valid ``imu`` payload: ``n`` samples from device time ``t0`` at ``rate`` Hz, gravity on z."""
    t = t0 + np.arange(n) / rate
    acc = np.stack([np.sin(7 * t), np.cos(5 * t), 9.81 + np.sin(3 * t)], axis=1)
    return orjson.dumps({"seq": seq, "t": t.round(4).tolist(), "acc": acc.round(4).tolist()})


def make_certs(directory: Path, openssl: str, other_ca: bool = False) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1 (as README.md tells an
    operator to make them), and with ``other_ca`` a second, unrelated CA (``other-ca.crt``).
    Returns (ca.crt, server.crt, server.key)."""
    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    if other_ca:
        run("req", "-x509", *ec, "-keyout", "other.key", "-out", "other-ca.crt", "-days", "2",
            "-subj", "/CN=other CA")
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"
