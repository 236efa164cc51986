"""Labels, online fine-tuning with TBPTT, promotion and rollback, drift detection."""

import sys

import numpy as np
import pytest
import torch
from torch import nn

from models.finetune import LearnerConfig, OnlineLearner, Sequence
from models.rnn import HARNet, ModelConfig
from stream.decode import Rejected
from stream.labels import LabelBook, LabelledWindow, WindowHistory, decode_label
from stream.monitor import Monitor


def test_labels_hold_until_the_next_and_spans_override():
    book = LabelBook()
    book.add("d", "squat", 10.0)
    book.add("d", "rest", 20.0)
    book.add("d", "walking", 15.0)  # late label, inserted in time order
    assert book.at("d", 9.0) is None
    assert book.at("d", 12.0) == "squat" and book.at("d", 16.0) == "walking" and book.at("d", 99.0) == "rest"
    assert book.window_label("d", 11.0, 13.0) == "squat"
    assert book.window_label("d", 14.0, 16.0) is None  # changes inside the window
    book.add("d", "burpee", 30.0, 40.0)
    assert book.at("d", 35.0) == "burpee" and book.at("d", 41.0) == "rest"


def test_a_window_across_the_gap_between_two_spans_of_one_label_is_not_labelled():
    """A labelled replay sends each run as a span: squat 0-10, nothing 10-12, squat 12-20. A window from 9
    to 13 holds 2 s of nothing; both its ends say squat, but not the same span's."""
    book = LabelBook()
    book.add("d", "squat", 0.0, 10.0)
    book.add("d", "squat", 12.0, 20.0)
    assert book.window_label("d", 9.0, 13.0) is None
    assert book.window_label("d", 12.5, 14.5) == "squat" and book.window_label("d", 1.0, 3.0) == "squat"
    book.add("d", "squat", 5.0)  # an open label of the same name beside a span: names still decide
    assert book.window_label("d", 19.0, 21.0) == "squat"


@pytest.mark.parametrize("payload, reason", [
    (b'{"label": "squat"}', "bad_time"),
    (b'{"label": 3, "t": 1}', "bad_label"),
    (b'{"label": "squat", "start": 5, "end": 4}', "bad_time"),
    (b'{"label": "squat", "t": true}', "bad_time"),
    (b"[]", "not_object"),
])
def test_bad_labels_rejected(payload, reason):
    with pytest.raises(Rejected) as info:
        decode_label(payload)
    assert info.value.reason == reason
    assert decode_label(b'{"label": "squat", "start": 1, "end": 2.5}') == ("squat", 1.0, 2.5)


def test_window_history_waits_for_late_labels():
    book, history = LabelBook(), WindowHistory(span=1.96, lateness=4.0)
    history.track("d")
    state = (torch.zeros(2, 8),)
    for k in range(1, 6):
        history.add(LabelledWindow("d", 2.0 * k, np.zeros((4, 3), np.float32), state, "rest", 0.9))
    book.add("d", "squat", 0.0)  # arrives after the windows
    resolved = history.resolve(book)
    assert [w.t_end for w in resolved] == [2.0, 4.0, 6.0]  # the last two may still get a late label
    assert all(w.label == "squat" for w in resolved)


def test_a_window_that_starts_where_its_label_starts_is_labelled():
    """t_end is the window's last sample; its first is span = (window - 1) / rate before it, so a label
    starting on the first sample covers the whole window (25 Hz, 2 s windows: span 1.96 s)."""
    book, history = LabelBook(), WindowHistory(span=49 / 25, lateness=4.0)
    history.track("d")
    state = (torch.zeros(2, 8),)
    for k in range(6):  # windows of samples 2k .. 2k + 1.96
        history.add(LabelledWindow("d", 2.0 * k + 1.96, np.zeros((4, 3), np.float32), state, "rest", 0.9))
    book.add("d", "rest", 0.0)  # the first sample of the first window
    book.add("d", "squat", 4.0)  # the first sample of the third window
    resolved = history.resolve(book)
    assert [w.label for w in resolved] == ["rest", "rest", "squat", "squat"]  # the last two wait


def test_a_device_whose_clock_goes_back_ends_its_session_and_its_later_labels():
    book, history = LabelBook(), WindowHistory(span=1.96, lateness=4.0)
    history.track("d")
    state = (torch.zeros(2, 8),)

    def window(t_end):
        return LabelledWindow("d", t_end, np.zeros((4, 3), np.float32), state, "rest", 0.9)

    book.add("d", "rest", 0.0)
    book.add("d", "squat", 100.0)
    for k in range(50, 56):  # the first session, up to 111.96 s
        history.add(window(2.0 * k + 1.96))
    assert [w.t_end for w in history.resolve(book)] == [101.96, 103.96, 105.96, 107.96]
    book.add("d", "lunge", 0.0)  # the device restarts, its clock at 0 again, and a new label comes
    resolved = []
    for k in range(8):
        history.add(window(2.0 * k + 1.96))
        resolved += history.resolve(book)
    # the first session's last two windows at once, on its own labels; the new one's on the new label
    assert [(w.t_end, w.label) for w in resolved[:2]] == [(109.96, "squat"), (111.96, "squat")]
    assert [w.label for w in resolved[2:]] == ["lunge"] * 6
    assert book.at("d", 105.0) == "lunge"  # the first session's squat from 100 s is forgotten


def test_labels_of_a_device_that_never_sends_samples_are_evicted_with_the_idle_devices(tiny_model):
    import time

    import orjson

    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False, idle_timeout=300.0),
                        StatefulClassifier(tiny_model, "tiny"))
    now = time.monotonic()
    label = orjson.dumps({"label": "squat", "t": 0.0})
    consumer.handle("har/ghost/label", label, now - 400.0)  # labels only, longer ago than idle_timeout
    consumer.handle("har/fresh/label", label, now - 10.0)
    consumer.handle("har/worker/label", label, now - 400.0)  # labels, then samples lately
    t = np.arange(25) / 25.0
    imu = {"seq": 0, "t": t.tolist(), "acc": [[0.0, 0.0, 9.81]] * 25}
    consumer.handle("har/worker/imu", orjson.dumps(imu), now - 10.0)
    consumer._evict_idle()
    assert "ghost" not in consumer.labels and "ghost" not in consumer.history
    assert "fresh" in consumer.labels and "worker" in consumer.labels and "worker" in consumer.history


def toy_model(seed=0):
    torch.manual_seed(seed)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5,
                              front="linear"))


def toy_sequence(rng, L=4):
    """Class 'up' when gravity points along +z, 'down' along -z."""
    y = torch.from_numpy(rng.integers(0, 2, L))
    x = torch.from_numpy(rng.normal(0, 1, (L, 10, 3)).astype(np.float32))
    x[:, :, 2] += torch.where(y == 1, 9.81, -9.81)[:, None]
    return Sequence("d", x, y, (torch.zeros(1, 16), torch.zeros(1, 16)))


def accuracy(model, seqs):
    ok = n = 0
    with torch.no_grad():
        for s in seqs:
            logits, _ = model(s.windows, None)
            ok += int((logits.argmax(1) == s.targets).sum())
            n += len(s.targets)
    return ok / n


def test_learner_learns_promotes_and_rolls_back(tmp_path):
    rng = np.random.default_rng(0)
    model = toy_model()
    test = [toy_sequence(rng) for _ in range(20)]
    before = accuracy(model, test)
    promoted = []
    learner = OnlineLearner(model, LearnerConfig(lr=1e-2, promotion_windows=16, versions_dir=tmp_path, adapt="shared"),
                            on_promote=lambda m, v: promoted.append((m, v)))
    reports = []
    for _ in range(60):
        reports += learner.learn(toy_sequence(rng))
    assert learner.updates == 60 and learner.skipped == 0
    assert all(np.isfinite(r.grad_norm) for r in reports)
    assert promoted, learner.comparison()
    served, version = promoted[-1]
    assert accuracy(served, test) > max(before, 0.9)
    assert (tmp_path / f"{version}.pt").exists()
    assert [v.version for v in learner.versions][-1] == version
    first = learner.versions[1].version
    learner.rollback(first)
    assert learner.version == first and promoted[-1][1] == first
    with pytest.raises(ValueError):
        learner.rollback("nope")


def test_non_finite_updates_are_skipped_and_never_corrupt_the_model():
    rng = np.random.default_rng(1)
    learner = OnlineLearner(toy_model(), LearnerConfig(adapt="shared"))
    before = {k: v.clone() for k, v in learner.challenger.state_dict().items()}
    bad = toy_sequence(rng)
    bad.windows[0, 0, 0] = float("nan")
    reports = learner.learn(bad)
    assert learner.skipped == 1 and reports[0].skipped
    for k, v in learner.challenger.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_sequence_with_a_non_finite_loss_is_not_kept_for_replay_or_by_the_adapter():
    """One bad sequence must not spoil every later update that would replay it."""
    rng = np.random.default_rng(4)
    for adapt in ("shared", "device"):
        learner = OnlineLearner(toy_model(), LearnerConfig(adapt=adapt, replay_per_update=8))
        bad = toy_sequence(rng)
        bad.windows[1, 3, 2] = float("nan")
        assert all(r.skipped for r in learner.learn(bad))
        later = [r for _ in range(10) for r in learner.learn(toy_sequence(rng))]
        assert later and not any(r.skipped for r in later), adapt
        assert (learner.skipped if adapt == "shared" else learner.adapters.skipped) == 1


def test_tbptt_k2_below_k1_backpropagates_through_k2_windows_only():
    rng = np.random.default_rng(5)
    seq = toy_sequence(rng, L=4)
    for k2 in (1, 2):
        serving = toy_model()
        serving.drop.p = 0.0  # no dropout, so that the two computations see the same network
        learner = OnlineLearner(serving, LearnerConfig(k1=4, k2=k2, replay_per_update=0, lr=0.0, adapt="shared"))
        [report] = learner.learn(seq)
        model = toy_model().train()  # the same weights
        model.drop.p = 0.0
        state, outs = tuple(s.unsqueeze(1) for s in seq.state), []
        for w in range(4):
            if w % k2 == 0:
                state = tuple(s.detach() for s in state)
            out, state = model(seq.windows[w][None], state)
            outs.append(out)
        loss = nn.functional.cross_entropy(torch.cat(outs), seq.targets)
        loss.backward()
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        assert report.grad_norm == pytest.approx(norm, rel=1e-5), k2


def test_tbptt_k2_reaches_further_back_than_k1():
    rng = np.random.default_rng(2)
    seq = toy_sequence(rng, L=8)
    norms = {}
    for k2 in (1, 4):
        learner = OnlineLearner(toy_model(), LearnerConfig(k1=1, k2=k2, replay_per_update=0, lr=0.0, adapt="shared"))
        norms[k2] = [r.grad_norm for r in learner.learn(seq)]
    assert len(norms[1]) == len(norms[4]) == 8
    assert norms[1][0] == pytest.approx(norms[4][0])  # nothing before the first window
    assert not np.allclose(norms[1][3:], norms[4][3:])


def test_adwin_on_input_magnitude_fires_on_unit_change_not_on_noise():
    rng = np.random.default_rng(3)
    mon = Monitor()
    events = []
    for k in range(1800):  # one device-hour of 2 s windows
        events += mon.observe("d", 2.0 * k, 9.81 + rng.normal(0, 0.3), float(rng.uniform(0.6, 0.99)))
    assert [e for e in events if e.device == "d"] == []
    for k in range(1800, 1810):  # the device starts reporting g
        events += mon.observe("d", 2.0 * k, 1.0 + rng.normal(0, 0.03), 0.5)
    fired = [e for e in events if e.device == "d" and e.signal == "input_magnitude"]
    assert fired and fired[0].t <= 2.0 * 1805 and fired[0].needs_labels


def test_prequential_metrics_and_error_drift():
    mon = Monitor()
    events = []
    for k in range(200):
        events += mon.labelled("d", 2.0 * k, "squat", "squat" if k < 100 else "rest")
    summary = mon.summary()
    assert summary["accuracy"] == 0.5 and summary["labelled_windows"] == 200
    assert summary["confusion"]["labels"] == ["rest", "squat"]
    assert any(e.signal == "error" and 200 < e.t < 260 for e in events)


def test_orientation_detector_fires_on_a_turned_strap_not_on_exercise_changes():
    rng = np.random.default_rng(4)
    mon = Monitor()
    usual = {"squat": np.array([0.0, 0.0, 9.81]), "row": np.array([9.81, 0.0, 0.0])}
    events = []
    for k in range(900):  # half an hour of alternating exercises, each with its own arm orientation
        label = "squat" if (k // 15) % 2 else "row"
        mean = usual[label] + rng.normal(0, 0.8, 3)
        events += mon.observe("d", 2.0 * k, 9.81, 0.9, mean, label)
    assert [e for e in events if e.signal == "orientation"] == []
    turn = np.array([[1, 0, 0], [0, -0.5, -0.866], [0, 0.866, -0.5]])  # strap turned 120° about x
    for k in range(900, 910):
        mean = turn @ usual["squat"] + rng.normal(0, 0.8, 3)
        events += mon.observe("d", 2.0 * k, 9.81, 0.9, mean, "squat")
    fired = [e for e in events if e.signal == "orientation"]
    assert fired and fired[0].t <= 2.0 * 905, [e.t for e in fired]


def test_labelled_orientation_fires_when_the_model_names_another_exercise():
    """A turned sensor makes the model name another exercise; its true class's direction is known."""
    rng = np.random.default_rng(5)
    mon = Monitor()
    usual = {"squat": np.array([0.0, 0.0, 9.81]), "row": np.array([9.81, 0.0, 0.0])}
    events = []
    for k in range(600):  # sets of 15 windows; rest between them held any way at all
        phase = (k // 15) % 3
        label = ("squat", "row", "rest")[phase]
        mean = (rng.normal(0, 1, 3) * 6 if label == "rest" else usual[label] + rng.normal(0, 0.8, 3))
        events += mon.labelled("d", 2.0 * k, label, label, mean)
    assert [e for e in events if e.signal == "orientation"] == []  # rest, held any way, never counts
    turn = np.array([[1, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # a quarter turn about x
    for k in range(600, 610):  # squats again, now named curls by the model
        events += mon.labelled("d", 2.0 * k, "squat", "biceps_curl", turn @ usual["squat"] + rng.normal(0, 0.8, 3))
    fired = [e for e in events if e.signal == "orientation"]
    assert len(fired) == 1 and fired[0].t <= 2.0 * 603 and fired[0].detector == "labelled"
    assert not fired[0].needs_labels


def test_the_learner_keeps_to_its_cpu_share():
    """After c CPU seconds of learning the learner rests c * (1 / share - 1): a flood of labels takes at
    most its share of a core; what it cannot take waits, and the oldest is dropped beyond queue_size."""
    import queue
    import threading
    import time

    from models.learner_process import _arrays, learner_loop

    class Burner(OnlineLearner):
        def learn(self, sequence):  # 40 ms of CPU per sequence, whatever the model
            end = time.thread_time() + 0.04
            while time.thread_time() < end:
                pass
            self.updates += 1
            return []

    rng = np.random.default_rng(3)
    sequence = toy_sequence(rng)
    learner = Burner(toy_model(), LearnerConfig(adapt="shared", cpu_share=0.25, queue_size=30))
    inbox, outbox = queue.Queue(), queue.Queue()
    for _ in range(40):
        inbox.put(("sequence", _arrays(sequence)))
    loop = threading.Thread(target=learner_loop, args=(learner, inbox, outbox))
    loop.start()
    time.sleep(1.0)
    inbox.put(("stop",))
    loop.join(5)
    messages = [outbox.get_nowait() for _ in range(outbox.qsize())]
    assert messages[-1] == ("stopped",)
    last = messages[-2][1]
    # 40 ms of work, then 120 ms of rest: about 6 in one second (about 25 without a share)
    assert 3 <= learner.updates <= 10 and last["updates"] == learner.updates
    assert last["rested"] == pytest.approx(0.12 * learner.updates, rel=0.3)
    assert last["dropped"] == 10  # 40 sent, 30 kept


def test_the_learner_process_learns_reports_and_stops():
    """The consumer's learner runs in a process of its own: sequences in, update reports, each
    device's adapter and the counters back through poll(); stop() applies everything it learnt."""
    import time

    from models.learner_process import LearnerProcess

    rng = np.random.default_rng(4)
    reports = []
    # at its parent's priority: this test is about what goes through the process, and SCHED_IDLE would
    # starve it on a machine whose cores other work fills (tested below, and in the consumer's test)
    config = LearnerConfig(cpu_share=1.0, below_serving=False)
    learner = LearnerProcess(toy_model(), config, on_update=reports.append).start()
    try:
        for _ in range(6):
            learner.submit(toy_sequence(rng))
        deadline = time.monotonic() + 60
        while learner.adapters.updates < 6 and time.monotonic() < deadline:
            learner.poll()
            time.sleep(0.05)
    finally:
        learner.stop()
    assert not learner.alive
    assert learner.adapters.updates == 6 and len(reports) == 6
    assert all(r.version.endswith("+adapter:d") and np.isfinite(r.loss) for r in reports)
    assert "d" in learner.adapters.state_dict()  # the serving side's copy, saved with its checkpoint
    learner.submit(toy_sequence(rng))  # to a learner that is gone: counted, not queued
    assert learner.dropped == 1


def test_the_learner_process_hands_promoted_weights_back(tmp_path):
    """Shared fine-tuning in the learner process: a promotion comes back as a model with the learnt
    weights and their version, saved; a rollback to an unknown version is refused at once."""
    import time

    from models.learner_process import LearnerProcess

    rng = np.random.default_rng(5)
    promoted = []
    config = LearnerConfig(adapt="shared", lr=1e-2, promotion_windows=16, versions_dir=tmp_path,
                           cpu_share=1.0, below_serving=False)  # at its parent's priority, as above
    model = toy_model()
    learner = LearnerProcess(model, config, on_promote=lambda m, v: promoted.append((m, v))).start()
    try:
        for _ in range(60):
            learner.submit(toy_sequence(rng))
        deadline = time.monotonic() + 60
        while not promoted and time.monotonic() < deadline:
            learner.poll()
            time.sleep(0.05)
        with pytest.raises(ValueError):
            learner.rollback("nope")
    finally:
        learner.stop()
    assert promoted, learner.comparison()
    assert learner.updates > 0 and learner.comparison()["windows"] >= 0
    assert learner.versions[-1].version == learner.version == promoted[-1][1]
    assert (tmp_path / f"{promoted[0][1]}.pt").exists()
    before, after = model.state_dict(), promoted[0][0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # what it learnt, not a copy


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    import os
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except OSError:
        return True


@pytest.mark.broker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; SCHED_IDLE is Linux's")
def test_the_learner_process_runs_below_serving_and_goes_with_a_killed_consumer(broker_url):
    """`harstream consume` learns in a child process scheduled SCHED_IDLE (it takes only CPU that
    serving leaves); after a kill -9 of the consumer it exits by itself instead of lingering."""
    import os
    import subprocess
    import uuid

    from tests.helpers import wait

    cmd = [sys.executable, "-m", "stream.cli", "consume", "--broker", str(broker_url), "--prefix",
           f"hartest{uuid.uuid4().hex[:8]}"]
    consumer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        learners = []

        def learner_started() -> bool:
            learners[:] = [p for p in _children(consumer.pid)
                           if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]
            return bool(learners) and os.sched_getscheduler(learners[0]) == os.SCHED_IDLE

        assert wait(learner_started, timeout=60), learners
        consumer.kill()
        consumer.wait(10)
        assert wait(lambda: _gone(learners[0]), timeout=10)
    finally:
        consumer.kill()


@pytest.mark.broker
def test_promote_and_rollback_commands_reach_the_learner_process_and_come_back(broker_url, tiny_model,
                                                                                tmp_path):
    """Over MQTT, as the dashboard sends them: a forced promotion is carried out in the learner
    process and its weights come back to serving (the retained model message names the new version,
    saved under the state directory); a rollback to an unknown version is refused and counted; a
    rollback to a saved version serves it again."""
    import threading
    import uuid

    import orjson

    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    from stream.mqtt import connect
    from tests.helpers import wait

    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(broker=broker_url, prefix=prefix, consumer_id=f"c{uuid.uuid4().hex[:6]}",
                            state_dir=tmp_path, learner=LearnerConfig(adapt="shared", below_serving=False))
    consumer = Consumer(config, StatefulClassifier(tiny_model, "tiny"))
    models = []
    watch = connect(broker_url, "test-watch-model", subscriptions=[(f"{prefix}/_consumer/+/model", 1)],
                    on_message=lambda c, u, m: models.append(orjson.loads(m.payload)))
    runner = threading.Thread(target=consumer.run)
    runner.start()
    command = f"{prefix}/_consumer/{config.consumer_id}/command"
    try:
        assert wait(lambda: consumer._client is not None and consumer._client.is_connected())
        assert wait(lambda: consumer.learner.alive, timeout=30)
        pub = connect(broker_url, "test-pub-command")
        pub.publish(command, orjson.dumps({"action": "promote"}), qos=1)
        assert wait(lambda: models and models[-1]["serving"] != "tiny", timeout=60), models
        promoted = models[-1]["serving"]
        assert consumer.pipeline.classifier.version == promoted
        assert promoted in [v["version"] for v in models[-1]["versions"]]
        assert (tmp_path / "models" / f"{promoted}.pt").exists()
        pub.publish(command, orjson.dumps({"action": "rollback", "version": "nope"}), qos=1)
        assert wait(lambda: consumer.stats.rejected["bad_command"] == 1)
        before = len(models)
        pub.publish(command, orjson.dumps({"action": "rollback", "version": promoted}), qos=1)
        assert wait(lambda: len(models) > before and models[-1]["serving"] == promoted, timeout=60), models
        pub.disconnect()
    finally:
        consumer.stop()
        runner.join(30)
        watch.disconnect()
    assert not consumer.learner.alive


def test_a_restarted_consumer_takes_its_labels_back_from_the_event_store(tmp_path, tiny_model):
    import orjson

    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    from stream.store import EventStore

    store = EventStore(tmp_path / "events.db")
    store.label("d1", "squat", 10.0, None)
    store.label("d1", "rest", 50.0, None)
    store.label("d2", "walking", 0.0, 5.0)
    store.close()
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=False),
                        StatefulClassifier(tiny_model, "tiny"))
    try:
        assert [consumer.labels.at("d1", t) for t in (5.0, 20.0, 60.0)] == [None, "squat", "rest"]
        assert consumer.labels.at("d2", 3.0) == "walking" and "d1" in consumer.history
        # d1 comes back with its clock restarted (its last published window was at 100 s): the labels
        # of its session before no longer name its windows
        consumer._resume["d1"] = 100.0
        t = np.arange(25) / 25.0
        consumer.handle("har/d1/imu", orjson.dumps({"seq": 0, "t": t.tolist(), "acc": [[0, 0, 9.81]] * 25}), 0.0)
        assert consumer.labels.at("d1", 60.0) is None
    finally:
        consumer.store.close()


def test_a_device_that_goes_idle_has_its_last_labelled_windows_learnt(tiny_model):
    """The windows still waiting for late labels, and a last group shorter than k1, go to the learner
    when the device is evicted, instead of being dropped."""
    import time

    import orjson

    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=True, label_lateness=4.0),
                        StatefulClassifier(tiny_model, "tiny"))
    submitted = []
    consumer.learner.submit = submitted.append  # what the learner would get; no process needed
    consumer._publish = lambda predictions: None  # no broker
    consumer.handle("har/d/label", orjson.dumps({"label": "squat", "t": 0.0}), time.monotonic())
    for k in range(20):  # 20 s in 1 s messages: 25 windows of 0.8 s
        t = k + np.arange(25) / 25.0
        acc = np.stack([np.sin(7 * t), np.cos(5 * t), 9.81 + np.sin(3 * t)], axis=1)
        consumer.handle("har/d/imu", orjson.dumps({"seq": k, "t": t.tolist(), "acc": acc.tolist()}),
                        time.monotonic())
        consumer._classify()
    before = sum(len(s.targets) for s in submitted)
    assert before < 25  # the last 4 s wait for late labels
    consumer._last_seen["d"] -= consumer.config.idle_timeout + 1
    consumer._evict_idle()
    assert sum(len(s.targets) for s in submitted) == 25
    assert all((s.targets == 1).all() for s in submitted)  # squat, the tiny model's class 1


def test_the_consumer_labels_a_window_that_starts_where_its_label_starts(tiny_model):
    """Through the consumer: labels that change exactly on a window's first sample leave no window of
    the stream unlabelled (tiny model: 0.8 s windows at 25 Hz, so windows start at 0, 0.8, 1.6, ...)."""
    import time

    import orjson

    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=True, label_lateness=4.0),
                        StatefulClassifier(tiny_model, "tiny"))
    submitted = []
    consumer.learner.submit = submitted.append
    consumer._publish = lambda predictions: None
    for name, t in (("rest", 0.0), ("squat", 1.6), ("rest", 4.0)):  # each on a window's first sample
        consumer.handle("har/d/label", orjson.dumps({"label": name, "t": t}), time.monotonic())
    for k in range(12):
        t = k + np.arange(25) / 25.0
        acc = np.stack([np.sin(7 * t), np.cos(5 * t), 9.81 + np.sin(3 * t)], axis=1)
        consumer.handle("har/d/imu", orjson.dumps({"seq": k, "t": t.tolist(), "acc": acc.tolist()}),
                        time.monotonic())
        consumer._classify()
    targets = torch.cat([s.targets for s in submitted]).tolist()
    assert len(targets) >= 8 and targets[:8] == [0, 0, 1, 1, 1, 0, 0, 0]  # rest, squat from 1.6, rest from 4
