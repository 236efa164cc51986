"""benchmarks/adaptation.py with --onset at or under the detectors' 20 s warm-up counted false alarms over a
negative number of hours ("-0.0 per device-hour"); it is refused before anything runs."""

from __future__ import annotations

import pytest

from tests.test_s12_bench import script


@pytest.mark.parametrize("onset", ["10", "20"])
def test_an_onset_within_the_warm_up_is_refused_at_once(onset, capsys):
    with pytest.raises(SystemExit) as stop:
        script("adaptation").main(["--onset", onset])
    assert stop.value.code == 2
    assert "--onset must be above 20 s" in capsys.readouterr().err
