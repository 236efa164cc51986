"""`harstream versions`: a running consumer's model versions listed, rolled back to and promoted through a
real broker, each command confirmed by the consumer itself."""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from models.checkpoint import save_checkpoint
from models.finetune import LearnerConfig, OnlineLearner
from stream.cli import main
from stream.versions import list_consumers

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_versions_lists_rolls_back_and_promotes_on_a_running_consumer(tmp_path, broker_url, tiny_model, capsys):
    state = tmp_path / "state"
    base = save_checkpoint(tmp_path / "m.pt", tiny_model, {})
    # a version made in an earlier life, kept in the state dir's models/ (as a promotion leaves it)
    learner = OnlineLearner(tiny_model, LearnerConfig(adapt="shared", versions_dir=state / "models",
                                                      serving_version=base))
    with __import__("torch").no_grad():
        for p in learner.challenger.parameters():
            p.add_(0.05)
    later = learner.promote({"forced": True})
    assert later != base

    prefix, consumer = f"vt{uuid.uuid4().hex[:8]}", "vtest"
    url = str(broker_url)
    common = ["--broker", url, "--prefix", prefix]
    log = open(tmp_path / "consumer.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "consume", *common, "--model", str(tmp_path / "m.pt"),
                             "--state-dir", str(state), "--id", consumer, "--adapt", "shared",
                             "--metrics-interval", "1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        found = {}
        while time.monotonic() < deadline:
            found = list_consumers(broker_url, prefix, quiet=0.3, timeout=2)
            c = found.get(consumer)
            if c is not None and c.status == "online" and len(c.versions) == 2:
                break
            assert proc.poll() is None, (tmp_path / "consumer.log").read_text()[-3000:]
            time.sleep(0.5)
        assert found[consumer].serving == base, (tmp_path / "consumer.log").read_text()[-3000:]

        code, out, _ = _run(capsys, "versions", *common)
        assert code == 0
        assert f"consumer {consumer} (online): serving {base}" in out
        marked = [line.split()[1] for line in out.splitlines() if line.startswith("  *")]
        assert marked == [base]
        assert later in out

        code, out, _ = _run(capsys, "versions", *common, "--json")
        listed = json.loads(out)[consumer]
        assert [v["version"] for v in listed["versions"]] == [base, later] and listed["serving"] == base

        # roll forward to the later version, then back to the first: each confirmed by the consumer
        for version in (later, base):
            code, out, _ = _run(capsys, "versions", *common, "--rollback", version, "--timeout", "60")
            assert code == 0 and out.splitlines()[-1] == f"consumer {consumer} serves {version}"
            assert list_consumers(broker_url, prefix)[consumer].serving == version

        code, out, _ = _run(capsys, "versions", *common, "--rollback", base)
        assert code == 0 and "already serves" in out

        # a promotion of a challenger that has learnt nothing (no labels came) serves the same weights
        code, out, _ = _run(capsys, "versions", *common, "--promote", "--timeout", "60")
        assert code == 0 and f"serves {base}" in out and "same weights" in out
        assert [v["version"] for v in list_consumers(broker_url, prefix)[consumer].versions] == [base, later]

        # what cannot be done is refused before anything is sent, naming what there is
        code, _, err = _run(capsys, "versions", *common, "--rollback", "nosuch")
        assert code == 2 and "keeps no version 'nosuch'" in err and base in err and later in err
        assert "consume --model FILE" in err  # what to do instead (an upgrade probe found none said)
        code, _, err = _run(capsys, "versions", *common, "--consumer", "other", "--promote")
        assert code == 2 and "no consumer 'other'" in err and consumer in err
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    code, _, err = _run(capsys, "versions", *common, "--consumer", consumer, "--rollback", later)
    assert code == 2 and "offline" in err


def test_versions_with_no_consumer_says_so(broker_url, capsys):
    prefix = f"vt{uuid.uuid4().hex[:8]}"
    code, out, _ = _run(capsys, "versions", "--broker", str(broker_url), "--prefix", prefix)
    assert code == 0 and "no consumer" in out
    code, _, err = _run(capsys, "versions", "--broker", str(broker_url), "--prefix", prefix, "--promote")
    assert code == 2 and "no online consumer that learns" in err


@pytest.mark.parametrize("consumer", ["", "a/b", "+", "#"])
def test_send_command_refuses_a_consumer_id_that_is_a_pattern(broker_url, consumer):
    from stream.versions import send_command
    with pytest.raises(ValueError, match="consumer id"):
        send_command(broker_url, "har", consumer, "promote")


def test_a_foreign_model_message_is_listed_as_far_as_it_goes(broker_url):
    """A retained message on a consumer's model topic that no consumer wrote (a wrong payload, odd types) is
    listed as far as it can be, without breaking the listing."""
    from stream.mqtt import connect
    prefix = f"vt{uuid.uuid4().hex[:8]}"
    pub = connect(broker_url, "vt-foreign")
    try:
        for consumer, payload in (("odd", b'{"serving": "v1", "updates": "many", "versions": [1, {"version": "v1"}]}'),
                                  ("text", b"not json")):
            pub.publish(f"{prefix}/_consumer/{consumer}/model", payload, qos=1, retain=True).wait_for_publish(5)
        found = list_consumers(broker_url, prefix)
        assert found["odd"].serving == "v1" and found["odd"].updates == 0
        assert [v["version"] for v in found["odd"].versions] == ["v1"]
        assert found["text"].serving is None
    finally:
        for consumer in ("odd", "text"):
            pub.publish(f"{prefix}/_consumer/{consumer}/model", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
