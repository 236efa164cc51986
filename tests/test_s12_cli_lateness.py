"""`harstream consume --label-lateness`: the consumer's label lateness (ConsumerConfig.label_lateness) was
reachable from code only; a lateness the label history cannot keep is refused in one line."""

from __future__ import annotations

import pytest

from stream import cli


def test_the_label_lateness_given_reaches_the_consumer(monkeypatch):
    import stream.consumer

    seen = {}

    class Stop(Exception):
        pass

    def consumer(config, classifier):
        seen["lateness"] = config.label_lateness
        raise Stop

    monkeypatch.setattr(stream.consumer, "Consumer", consumer)
    with pytest.raises(Stop):
        cli.main(["consume", "--broker", "mqtt://127.0.0.1:1", "--no-learn", "--label-lateness", "90"])
    assert seen["lateness"] == 90.0
    with pytest.raises(Stop):
        cli.main(["consume", "--broker", "mqtt://127.0.0.1:1", "--no-learn"])
    assert seen["lateness"] == 4.0  # the default, as before


def test_a_lateness_the_history_cannot_keep_is_refused_in_one_line(capsys):
    assert cli.main(["consume", "--broker", "mqtt://127.0.0.1:1", "--no-learn", "--label-lateness", "99999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label lateness of 99999 s" in err[0] and "at most 3600" in err[0]
    with pytest.raises(SystemExit):
        cli.main(["consume", "--label-lateness", "-1"])
