"""Model versions: every one kept in the versions folder, the starting one included, and reachable by a
rollback, also after a restart (a new learner, learner process or consumer over the same folder)."""

import time

import orjson
import torch

from models.checkpoint import save_checkpoint
from models.finetune import LearnerConfig, OnlineLearner
from models.rnn import HARNet, ModelConfig


def toy_model(seed=0):
    torch.manual_seed(seed)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5,
                              front="linear"))


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def nudge(learner: OnlineLearner, by: float) -> None:
    """Change the challenger's weights, as training would."""
    with torch.no_grad():
        for p in learner.challenger.parameters():
            p.add_(by)


def first_life(directory, model, start="base-v1") -> tuple[OnlineLearner, list[str]]:
    """A learner that starts from ``model`` and promotes two versions; returns it and its versions."""
    learner = OnlineLearner(model, LearnerConfig(adapt="shared", versions_dir=directory, serving_version=start))
    made = [start]
    for by in (0.1, 0.2):
        nudge(learner, by)
        made.append(learner.promote({"forced": True}))
    return learner, made


def test_the_starting_version_is_saved_and_can_be_rolled_back_to(tmp_path):
    model = toy_model()
    served = []
    learner = OnlineLearner(model, LearnerConfig(adapt="shared", versions_dir=tmp_path, serving_version="base-v1"),
                            on_promote=lambda m, v: served.append((m, v)))
    assert (tmp_path / "base-v1.pt").exists()
    assert learner.versions[0].version == "base-v1" and learner.versions[0].path == str(tmp_path / "base-v1.pt")
    nudge(learner, 0.1)
    promoted = learner.promote({"forced": True})
    assert not same_weights(learner.serving, model)
    learner.rollback("base-v1")
    assert learner.version == "base-v1"
    assert same_weights(learner.serving, model) and same_weights(learner.challenger, model)
    assert served[-1][1] == "base-v1" and same_weights(served[-1][0], model)
    assert [v.version for v in learner.versions] == ["base-v1", promoted]


def test_a_restarted_learner_knows_every_version_saved_before_and_saves_no_duplicate(tmp_path):
    model = toy_model()
    old, made = first_life(tmp_path, model)
    weights = {v.version: v for v in old.versions}
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert set(files) == {f"{v}.pt" for v in made}
    # a restart serves the last version (the consumer's serving.pt) and builds a new learner from it
    again = OnlineLearner(old.serving, LearnerConfig(adapt="shared", versions_dir=tmp_path, serving_version=made[-1]))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files  # nothing written again
    assert [v.version for v in again.versions] == made  # in the order they were made
    assert [v.parent for v in again.versions] == [None, *made[:-1]]
    assert again.versions[1].metrics == weights[made[1]].metrics == {"forced": True}
    for version in (made[1], made[0]):
        restored = again.rollback(version)
        assert again.version == version
        assert same_weights(again.serving, restored)
    assert same_weights(again.serving, model)  # the starting version, made before the restart
    # what the new life promotes comes after what the old one made
    nudge(again, 0.3)
    newest = again.promote({"forced": True})
    assert [v.version for v in again.versions] == [*made, newest]
    assert [v.version for v in OnlineLearner(model, LearnerConfig(
        adapt="shared", versions_dir=tmp_path, serving_version=made[0])).versions] == [*made, newest]


def test_a_restarted_learner_process_rolls_back_to_a_version_made_before(tmp_path):
    from models.checkpoint import load_checkpoint
    from models.learner_process import LearnerProcess

    model = toy_model()
    old, made = first_life(tmp_path, model)
    first_promoted, _ = load_checkpoint(tmp_path / f"{made[1]}.pt")
    config = LearnerConfig(adapt="shared", versions_dir=tmp_path, serving_version=made[-1], cpu_share=1.0,
                           below_serving=False)
    served = []
    learner = LearnerProcess(old.serving, config, on_promote=lambda m, v: served.append((m, v)))
    assert [v.version for v in learner.versions] == made
    learner.start()
    try:
        for version, expected in ((made[1], first_promoted), (made[0], model)):
            learner.rollback(version)
            deadline = time.monotonic() + 60
            while not (served and served[-1][1] == version) and time.monotonic() < deadline:
                learner.poll()
                time.sleep(0.05)
            assert served and served[-1][1] == version
            assert same_weights(served[-1][0], expected)
            assert learner.version == version and [v.version for v in learner.versions] == made
    finally:
        learner.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{v}.pt" for v in made)


class Client:
    """What the consumer publishes, without a broker."""

    def __init__(self) -> None:
        self.sent = []

    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append((topic, payload))


def test_a_restarted_consumer_lists_and_rolls_back_to_every_version_in_its_state_dir(tmp_path, tiny_model):
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    def consumer():
        c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=True,
                                    learner=LearnerConfig(adapt="shared")),
                     StatefulClassifier(tiny_model, "tiny"))
        c._client = Client()
        return c

    first = consumer()
    versions = tmp_path / "models"
    assert (versions / "tiny.pt").exists()  # the model it started with
    assert [v.version for v in first.learner.versions] == ["tiny"]
    first.store.close()
    # a promotion in that life: saved in models/, and served (the consumer's checkpoint, serving.pt)
    learner = OnlineLearner(tiny_model, LearnerConfig(adapt="shared", versions_dir=versions, serving_version="tiny"))
    nudge(learner, 0.1)
    promoted = learner.promote({"forced": True})
    save_checkpoint(tmp_path / "serving.pt", learner.serving, {"online": True})

    again = consumer()
    try:
        assert again.pipeline.classifier.version == promoted
        assert sorted(p.name for p in versions.iterdir()) == sorted(["tiny.pt", f"{promoted}.pt"])
        assert [v.version for v in again.learner.versions] == ["tiny", promoted]
        again._publish_model()
        body = orjson.loads(again._client.sent[-1][1])
        assert body["serving"] == promoted and [v["version"] for v in body["versions"]] == ["tiny", promoted]
        again._command(orjson.dumps({"action": "rollback", "version": "tiny"}))  # not refused
    finally:
        again.store.close()


def test_promoting_weights_a_kept_version_has_adds_no_second_entry(tmp_path):
    """A forced promotion of a challenger that learnt nothing since (`harstream versions --promote` on a
    consumer whose labels have not arrived) serves the same weights: same version, listed once, and its file
    keeps naming its true parent (not itself)."""
    from models.checkpoint import load_checkpoint
    learner, made = first_life(tmp_path, toy_model())
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = learner.promote({"forced": True})
    assert again == made[-1] and learner.version == made[-1]
    assert [v.version for v in learner.versions] == made
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files
    assert load_checkpoint(tmp_path / f"{made[-1]}.pt")[1]["metadata"]["parent"] == made[-2]
    learner.rollback(made[0])  # weights that came back to a kept version are served under it
    nudge(learner, 0.1)
    assert learner.promote({"forced": True}) == made[1] and [v.version for v in learner.versions] == made
