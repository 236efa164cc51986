"""Review of model versions: `harstream versions`, the consumer's commands and the versions it keeps."""

import json
import logging
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.finetune import LearnerConfig, OnlineLearner
from stream.cli import main
from stream.versions import list_consumers

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class Client:
    """What the consumer publishes, without a broker."""

    def __init__(self) -> None:
        self.sent = []

    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append((topic, payload, retain))


def _consumer(tmp_path, tiny_model, learn=True):
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=learn,
                                learner=LearnerConfig(adapt="shared")),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = Client()
    return c


def test_a_refused_command_is_answered_with_the_reason_and_logged(tmp_path, tiny_model, caplog):
    """A rollback the consumer cannot do (its version's file gone) was refused at debug level only and never
    answered: `harstream versions` waited its whole --timeout, then sent the user to a log that said nothing.
    Now the consumer logs it as a warning and answers with a model message naming the command and why."""
    from stream.decode import Rejected
    learner = OnlineLearner(tiny_model, LearnerConfig(adapt="shared", versions_dir=tmp_path / "models",
                                                      serving_version="tiny"))
    with torch.no_grad():
        for p in learner.challenger.parameters():
            p.add_(0.1)
    later = learner.promote({"forced": True})
    c = _consumer(tmp_path, tiny_model)
    try:
        assert [v.version for v in c.learner.versions] == ["tiny", later]
        (tmp_path / "models" / f"{later}.pt").unlink()
        with caplog.at_level(logging.WARNING, logger="stream.consumer"), pytest.raises(Rejected):
            c._command(orjson.dumps({"action": "rollback", "version": later}))
        topic, payload, retain = c._client.sent[-1]
        assert topic.endswith("/model") and retain
        body = orjson.loads(payload)
        assert body["serving"] == "tiny"
        assert body["refused"]["action"] == "rollback" and body["refused"]["version"] == later
        assert "cannot be read" in body["refused"]["reason"]
        assert any("refused" in r.getMessage() and later in r.getMessage() for r in caplog.records)
    finally:
        c.store.close()


def test_a_consumer_that_does_not_learn_says_so_to_a_command(tmp_path, tiny_model):
    from stream.decode import Rejected
    c = _consumer(tmp_path, tiny_model, learn=False)
    try:
        with pytest.raises(Rejected):
            c._command(orjson.dumps({"action": "promote"}))
        body = orjson.loads(c._client.sent[-1][1])
        assert body["refused"]["action"] == "promote" and "--no-learn" in body["refused"]["reason"]
    finally:
        c.store.close()


def test_versions_refuses_a_timeout_that_is_no_wait(capsys):
    """--timeout 0 or -1 sent the command and reported at once that the consumer did not confirm it (exit 2),
    though the consumer carried it out."""
    for value in ("0", "-1", "nan"):
        with pytest.raises(SystemExit) as exc:
            main(["versions", "--promote", "--timeout", value])
        assert exc.value.code == 2
        assert "--timeout" in capsys.readouterr().err


@pytest.fixture(scope="module")
def running(tmp_path_factory, broker_url):
    """A real consumer (``--state-dir``, ``--adapt shared``) keeping three versions: (argv of the broker and
    prefix, its id, its state dir, the versions)."""
    from models.rnn import HARNet, ModelConfig
    tmp_path = tmp_path_factory.mktemp("running")
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=("rest", "squat", "pushup"), hidden=8, layers=1, window=50, hop=50,
                               patch=5))
    state = tmp_path / "state"
    made = [save_checkpoint(tmp_path / "m.pt", model, {})]
    learner = OnlineLearner(model, LearnerConfig(adapt="shared", versions_dir=state / "models",
                                                 serving_version=made[0]))
    for by in (0.05, 0.1):
        with torch.no_grad():
            for p in learner.challenger.parameters():
                p.add_(by)
        made.append(learner.promote({"forced": True}))
    prefix, consumer = f"rv{uuid.uuid4().hex[:8]}", "rvtest"
    common = ["--broker", str(broker_url), "--prefix", prefix]
    log = open(tmp_path / "consumer.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "consume", *common, "--model", str(tmp_path / "m.pt"),
                             "--state-dir", str(state), "--id", consumer, "--adapt", "shared"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            c = list_consumers(broker_url, prefix, quiet=0.3, timeout=2).get(consumer)
            if c is not None and c.status == "online" and len(c.versions) == 3:
                break
            assert proc.poll() is None, (tmp_path / "consumer.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail((tmp_path / "consumer.log").read_text()[-3000:])
        yield common, consumer, state, made
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_versions_json_output_of_a_command_is_json_alone(running, broker_url, capsys):
    """`--json` with a command printed 'asking consumer ...' on stdout before the JSON (stdout was no JSON), and
    'already serves' as plain text; now stdout holds the JSON alone, the progress line goes to stderr."""
    common, consumer, _, made = running
    code, out, err = _run(capsys, "versions", *common, "--rollback", made[1], "--json", "--timeout", "60")
    assert code == 0 and json.loads(out)["serving"] == made[1] and "asking consumer" in err
    code, out, _ = _run(capsys, "versions", *common, "--rollback", made[1], "--json")
    assert code == 0 and json.loads(out)["serving"] == made[1]
    code, out, _ = _run(capsys, "versions", *common, "--promote", "--json", "--timeout", "60")
    assert code == 0 and json.loads(out)["consumer"] == consumer


def test_a_refused_rollback_fails_at_once_with_the_consumers_reason(running, broker_url, capsys):
    """Through a real consumer and broker: a rollback to a version whose file was deleted is refused with the
    consumer's reason at once, not after --timeout with 'see its log'."""
    common, consumer, state, made = running
    serving = list_consumers(broker_url, common[3])[consumer].serving
    (state / "models" / f"{made[2]}.pt").unlink()
    started = time.monotonic()
    code, _, err = _run(capsys, "versions", *common, "--rollback", made[2], "--timeout", "20")
    assert code == 2 and f"refused the rollback: version {made[2]!r} cannot be read" in err, err
    assert time.monotonic() - started < 15
    assert list_consumers(broker_url, common[3])[consumer].serving == serving


def _nudged_promotions(learner: OnlineLearner, n: int, by: float = 0.01) -> list[str]:
    made = []
    for _ in range(n):
        with torch.no_grad():
            for p in learner.challenger.parameters():
                p.add_(by)
        made.append(learner.promote({"forced": True}))
    return made


def test_kept_versions_can_be_bounded_on_disk_and_in_the_list(tmp_path, tiny_model):
    """With labels flowing, shared fine-tuning promotes about once per promotion_windows (24) labelled windows
    (measured: 641 versions from 16,000 windows of a toy stream), each a file of the model's size (280 kB for
    the default) in models/. Every version is kept by default (a rollback to any is promised); with
    keep_versions (`consume --keep-versions N`) at most N are: the oldest promoted ones go, files too; the
    starting model and the one served stay."""
    folder = tmp_path / "models"
    learner = OnlineLearner(tiny_model, LearnerConfig(adapt="shared", versions_dir=folder, serving_version="start",
                                                      keep_versions=100))
    made = _nudged_promotions(learner, 104)
    kept = [v.version for v in learner.versions]
    assert len(kept) == 100 and kept == ["start", *made[-99:]]
    assert sorted(p.name for p in folder.glob("*.pt")) == sorted(f"{v}.pt" for v in kept)
    assert [v.version for v in OnlineLearner(tiny_model, LearnerConfig(  # a restart lists what is kept
        adapt="shared", versions_dir=folder, serving_version=made[-1])).versions] == kept


def test_the_starting_model_and_the_served_version_are_never_forgotten(tmp_path, tiny_model):
    folder = tmp_path / "models"
    learner = OnlineLearner(tiny_model, LearnerConfig(adapt="shared", versions_dir=folder, serving_version="start",
                                                      keep_versions=1))
    made = _nudged_promotions(learner, 3)
    assert [v.version for v in learner.versions] == ["start", made[-1]] and learner.version == made[-1]
    assert sorted(p.name for p in folder.glob("*.pt")) == sorted(["start.pt", f"{made[-1]}.pt"])
    learner.rollback("start")
    assert learner.version == "start"
    with pytest.raises(ValueError, match="unknown model version"):
        learner.rollback(made[0])
    with pytest.raises(ValueError, match="keep_versions"):
        LearnerConfig(keep_versions=0)


def test_no_consumer_to_command_names_why_each_seen_cannot_take_it():
    """Consumers all offline (the retained messages of past runs) were named bare, after 'no online consumer
    that learns ... a consumer run with --no-learn keeps no versions': it read as if they ran --no-learn."""
    from stream.versions import ConsumerModels, choose_consumer
    found = {"old": ConsumerModels("old", "offline", "v1", [{"version": "v1"}]),
             "plain": ConsumerModels("plain", "online", "v1", [])}
    with pytest.raises(ValueError) as exc:
        choose_consumer(found, None)
    assert "old (offline)" in str(exc.value) and "plain (online, keeps no versions)" in str(exc.value)


def test_every_version_is_kept_by_default_and_the_model_message_lists_the_newest(tmp_path, tiny_model):
    """The model message listed every version: past about 850 it outgrew the dashboard's 256 kB and the Model
    page went blank. It now lists the starting model, the one served and the newest LISTED_VERSIONS, says how
    many are kept, and a rollback to one not listed still works."""
    from stream.consumer import LISTED_VERSIONS
    from stream.versions import ConsumerModels, format_listing
    c = _consumer(tmp_path, tiny_model)
    local = OnlineLearner(tiny_model, LearnerConfig(adapt="shared", versions_dir=tmp_path / "v", serving_version="s"))
    made = _nudged_promotions(local, LISTED_VERSIONS + 5)
    assert len(local.versions) == LISTED_VERSIONS + 6  # none forgotten by default
    assert all((tmp_path / "v" / f"{v}.pt").exists() for v in made)
    c.learner = local  # the consumer's view of its learner: versions, counters, comparison
    c._publish_model()
    body = orjson.loads(c._client.sent[-1][1])
    listed = [v["version"] for v in body["versions"]]
    assert body["versions_kept"] == LISTED_VERSIONS + 6
    assert listed == ["s", *made[-LISTED_VERSIONS:]]
    entry = ConsumerModels("c", "online", made[-1], body["versions"], body["versions_kept"])
    assert "older not listed" in format_listing({"c": entry})
    local.rollback(made[0])  # not listed, kept: served again, and listed as the one served
    assert local.version == made[0]
    c.pipeline.classifier.version = made[0]
    c._publish_model()
    assert [v["version"] for v in orjson.loads(c._client.sent[-1][1])["versions"]][:2] == ["s", made[0]]
