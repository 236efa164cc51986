"""Review of the importers (``harstream import``) and the phone adapters with damaged or odd input: bad input gets a
clear error naming the file and line and loses nothing; an adapter decodes a payload right or refuses it with a
counted reason."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from models.importers import DatasetError, load_dataset
from tests.test_importers import (
    EXERMOTE_HEADER,
    exermote_row,
    write_barbell,
    write_exermote,
    write_muvr,
    write_uci,
)

REPO = Path(__file__).resolve().parents[1]


def _error(name: str, src: Path) -> str:
    with pytest.raises(DatasetError) as exc:
        load_dataset(name, src)
    return str(exc.value)


# -------------------------------------------------------------------------------------------------
# importers: the written file


def _limited_import(args: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """``harstream import`` in a process that cannot write files over ``max_bytes`` (as on a full disk)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "stream.cli", "import", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, preexec_fn=limit, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_import_that_cannot_be_written_whole_leaves_no_half_file_and_keeps_the_earlier_one(tmp_path):
    """Found importing muvr onto a 200 kB tmpfs: the error was clear, but OUT was left half-written (200 kB of
    rows cut mid-line, which train would read as a shorter data set) and the earlier OUT it replaced was lost."""
    src = write_muvr(tmp_path / "muvr")
    (src / "labelled" / "arms" / "labelled_arms_jan-2_3.csv").write_text(
        "".join(f"0.{k % 10},0.{k % 7},-1.0,biceps-curl,,40.0,20\n" for k in range(300)))
    out = tmp_path / "out" / "muvr.csv"
    out.parent.mkdir()
    out.write_text("an earlier import\n")
    done = _limited_import(["muvr", str(src), str(out)], max_bytes=8192)
    assert done.returncode == 2, done.stderr
    assert f"{out}: cannot write" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text() == "an earlier import\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["muvr.csv"]  # no temporary file left either

    out.unlink()  # and with no earlier file: none at all
    done = _limited_import(["muvr", str(src), str(out)], max_bytes=8192)
    assert done.returncode == 2 and list(out.parent.iterdir()) == []


def test_import_into_a_missing_folder_names_it(tmp_path):
    src = write_muvr(tmp_path / "muvr")
    out = tmp_path / "nowhere" / "muvr.csv"
    done = _limited_import(["muvr", str(src), str(out)], max_bytes=1 << 30)
    assert done.returncode == 2 and f"{out}: cannot write: No such file or directory" in done.stderr
    assert not out.parent.exists()
