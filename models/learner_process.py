"""The online learner in a process of its own, beside the serving process.

Why a process: serving and learning in one Python process share one interpreter lock. At 5,000
devices the consumer's service and network threads keep it busy about 0.75 of the time, and a
learner thread at its 0.2 share of a core brought that near 0.9: windows queued behind it. Measured
with the same label traffic both ways (``benchmarks/learning_latency.py``, docs/learning_latency.md;
two runs of three rounds): the learner thread cost 1.03-1.18x the p50 latency and 1.67-2.01x the
worst second's p99; in this process, scheduled below serving, 0.98-1.14x and 1.21-1.25x. (Resting the
thread after every 2 ms of learning instead of after every sequence, or letting it run only in turns
between serving cycles, had done no better.)

The serving side (``LearnerProcess``) sends each labelled ``Sequence`` as numpy arrays (with the time it was
labelled: one labelled before a rollback the learner takes after it decides no promotion), and polls
(``poll``, once per serving cycle) what comes back: update reports, each device's adapter after it
learnt (the serving process keeps a copy of every adapter: it applies them in the batched pass and
saves them with its checkpoint), promoted or rolled-back weights (as checkpoint bytes), the answer to
each rollback or promote command (``("command", kind)`` when the learner takes it, then the weights if
carried out, then ``("answered", kind, reason)``, reason None when carried out), and the learner's
counters (with the version it trains from). A message that cannot be read on the serving side (unpickled) is
skipped, and answers the command it was the weights of as not carried out, naming why; a learner that then
reports a version other than the one served (weights that never reached serving, a command's or its own
promotion's) is sent back to the one served (``("resync", its version, the one served)``). The serving side
also says each version it serves (``("served", version)``): the learner never forgets (``keep_versions``) the one
last said served nor those it handed over since, its own version not being the one served when it drifted. The
learner side (``learner_loop``) keeps the newest ``queue_size`` sequences (dropping the oldest beyond) and learns
them, resting after each to keep to ``cpu_share`` of a core (``Pacer``).

The serving side never holds more than ``2 * queue_size`` sequences, however slow the learner (a
SCHED_IDLE process on a saturated machine may get no CPU at all): at most ``queue_size`` sent and not
yet taken by the learner (it reports how many it took with its counters), and at most ``queue_size``
waiting to be sent, the oldest of which is dropped (and counted in ``dropped``) beyond.

A learner process that ends unexpectedly (the OOM killer, a crash, an operator's kill) is started again
(``restarts``) from what the serving side serves then: the model of the last weights it served (not the one
it started with), its copy of the adapters, its version, and the versions folder. Before, its labels were
never learnt again for the rest of the consumer's life. The sequences it had been sent and not learnt (taken off
its inbox or not, as it last reported with its counters) are lost, counted in ``lost_sequences`` (and ``dropped``)
with a warning. They are not sent again: the serving side would keep a copy of each until learnt (up to
``queue_size`` more held), turn those copies too, and could not tell a sequence whose adapter it had got but not
the counters after (two messages) from one not learnt (learnt twice); and one that killed the learner would kill
each started again, quick ends that give up. It is started after ``RESTART_DELAY`` s, doubled after
each quick end in a row (a life shorter than ``QUICK_LIFE`` s) up to ``RESTART_DELAY_MAX``; after
``MAX_QUICK_ENDS`` quick ends in a row it is not started again (``gave_up``, an ERROR). Starting a process
held its caller about a second (measured 1.06-1.14 s of wall time, 1 ms of CPU, for the default model: the
parent waited for the child to read what it was sent; 5 s on a loaded machine; ``_spawn`` now sends the model
through the inbox, 0.01-0.03 s), and it is started again from a thread of its own all the same, and
``poll`` takes it up on the serving thread once it runs. Sequences submitted meanwhile wait (``queue_size`` at
most); a command is refused. ``stop`` never starts one again. A command before the first ``start`` is sent after
the start message; one after ``stop`` is refused.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from models.checkpoint import checkpoint_bytes, load_checkpoint, stored_config
from models.finetune import (
    LearnerConfig,
    OnlineLearner,
    Pacer,
    Sequence,
    UpdateReport,
    VersionInfo,
    VersionNotSaved,
    starting_versions,
)
from models.personal import DeviceAdapters
from models.rnn import HARNet

__all__ = ["LearnerProcess", "learner_loop"]

log = logging.getLogger(__name__)


def _below_serving() -> None:
    """Run only on CPU that nothing else wants (Linux's SCHED_IDLE), else as far down as niceness goes.
    Measured at 5,000 devices: SCHED_IDLE p50 / p99 of the median second 18.7 / 43.6 ms, niceness 19
    19.3 / 46.4, niceness 5 20.1-21.3 / 46-50, against 17.3-17.7 / 39-41 with learning off."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed
        try:
            os.nice(19)
        except OSError:
            pass


def _die_with_parent() -> None:
    """Linux: the kernel kills this process as soon as the thread that started it ends
    (``PR_SET_PDEATHSIG``), however busy the machine is. Noticing it by itself (``getppid``, still
    checked) works too, but a SCHED_IDLE process on cores that other work fills gets so little CPU that
    shutting its interpreter down took longer than 10 s (tests/test_online.py under load)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def _arrays(seq: Sequence) -> tuple:
    """A sequence as plain numpy arrays: they pickle in microseconds, with no shared memory."""
    return (seq.device, seq.windows.numpy(), seq.targets.numpy(), tuple(s.numpy() for s in seq.state), seq.labelled)


def _sequence(item: tuple) -> Sequence:
    device, windows, targets, state, labelled = item
    return Sequence(device, torch.from_numpy(windows), torch.from_numpy(targets),
                    tuple(torch.from_numpy(s) for s in state), labelled)


def _turned(item: tuple, Q: np.ndarray) -> tuple:
    """A sequence (as arrays) with both sensors of its windows turned by Q (``DeviceAdapters.turn``)."""
    # imported here: at the top it put scipy (0.6 s of CPU) in every learner process's start, beside the
    # consumer serving its first windows (the demo's p99 latency went from 26 ms to 200-700 ms)
    from models.orientation import turn_sensors
    device, windows, targets, state, labelled = item
    return device, turn_sensors(windows, Q.T), targets, state, labelled


def _numpy(entry: dict) -> dict:
    """An adapter's state_dict entry with numpy arrays for tensors, and back (``_tensors``)."""
    return {k: v.numpy() if torch.is_tensor(v) else v for k, v in entry.items()}


def _tensors(entry: dict) -> dict:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in entry.items()}


def _counters(learner: OnlineLearner, pacer: Pacer, dropped: int, taken: int, learnt: int) -> dict:
    # version: what the learner trains from, which the serving side checks against what it serves; learnt: the
    # sequences taken that it learnt (or failed on): those taken and neither learnt nor dropped die with it;
    # save_failures: promotions not served, their version not written (disk full, below the floor kept free)
    return {"updates": learner.updates, "skipped": learner.skipped, "dropped": dropped, "taken": taken,
            "learnt": learnt, "rested": pacer.rested, "comparison": learner.comparison(), "version": learner.version,
            "save_failures": learner.save_failures}


def learner_loop(learner: OnlineLearner, inbox, outbox, alive: Callable[[], bool] = lambda: True) -> None:
    """Learn what comes in ``inbox`` until a ``("stop",)`` (or until ``alive()`` is false); report to
    ``outbox`` (see the module's docstring for the messages). Runs in the learner process, or in a
    thread in tests."""
    cfg = learner.config
    stop = threading.Event()
    waiting: deque = deque(maxlen=cfg.queue_size)  # the newest sequences; the oldest fall out
    dropped = taken = learnt = 0  # taken: sequences received (the serving side sends while few are in flight)
    learner.confirmed = True  # the serving side says which version it serves ("served", "resync")

    def take(item) -> None:
        nonlocal dropped, taken
        kind = item[0]
        if kind == "sequence":
            taken += 1
            dropped += len(waiting) == waiting.maxlen
            waiting.append(item[1])
        elif kind == "stop":
            stop.set()
        elif kind == "turn":  # the device's windows come turned anew: those waiting and its adapter follow
            _, device, Q = item
            for i, seq in enumerate(waiting):
                if seq[0] == device:
                    waiting[i] = _turned(seq, Q)
            if learner.adapters is not None:
                learner.adapters.turn(device, Q)
            outbox.put(("turned", device))
        elif kind == "adapters":  # a restarted learner's: the serving side's adapters of devices turned meanwhile
            if learner.adapters is not None:
                learner.adapters.load_state_dict({d: _tensors(e) for d, e in item[1].items()})
        elif kind == "served":  # the serving side serves the version handed over: the one before may be forgotten
            learner.is_served(item[1])
        elif kind == "resync":  # the serving side never got the weights of ``diverged``: back to what it serves
            _, diverged, served = item
            learner.is_served(served, diverged)  # its file is kept (keep_versions), to go back to
            if learner.version == diverged:  # else a version served since (a command's, a promotion's)
                try:
                    learner.rollback(served)
                    log.warning("learner: the weights of %s never reached serving; training from %s again",
                                diverged, served)
                except Exception as exc:  # the served version has no file (no versions folder), or lost it
                    log.warning("learner: the weights of %s never reached serving, which serves %s, and it "
                                "cannot go back to it (%s): it trains from weights not served until the next "
                                "promotion or rollback", diverged, served, exc)
                outbox.put(("counters", _counters(learner, pacer, dropped, taken, learnt)))
        elif kind in ("rollback", "promote"):
            # answered both ways: the serving side holds the command's answer until then (the weights that
            # come between the two are the command's), and publishes a refusal as one it found itself
            outbox.put(("command", kind))
            reason = None
            try:
                if kind == "rollback":
                    learner.rollback(item[1])
                else:
                    learner.promote(item[1])
            except VersionNotSaved as exc:  # the learner said so (once a minute at most) and counted it
                reason = str(exc)
            except ValueError as exc:  # the version's file gone or damaged since the serving side checked it
                log.warning("learner: %s refused: %s", kind, exc)
                reason = str(exc)
            except Exception as exc:  # a learner bug: learning goes on
                log.exception("learner: %s failed", kind)
                reason = f"the learner could not carry it out ({type(exc).__name__}: {exc})"
            outbox.put(("answered", kind, reason))
            outbox.put(("counters", _counters(learner, pacer, dropped, taken, learnt)))

    def rest(seconds: float) -> None:
        """The pacer's rest, awake to what comes meanwhile: a rest is up to 1 / cpu_share - 1 times what the last
        sequence took (4x at the default 0.2; seconds for a long one), and before, a stop, or a command, waited
        for it to end (a consumer stopping then terminated the learner after its 5 s wait, a WARNING). What taking a
        message costs is work, not rest: the rest is made longer by that CPU (which the pacer counts in the next rest
        too). Before, a 40 ms command every 200 ms took the learner to 0.29-0.39 of a core at --learn-cpu 0.25."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and alive():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = inbox.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            began = time.thread_time()
            take(item)
            deadline += time.thread_time() - began

    pacer = Pacer(cfg.cpu_share, stop, wait=rest)
    while not stop.is_set():
        try:
            take(inbox.get(timeout=0.0 if waiting else 0.5))
            while True:  # everything that came meanwhile: the newest sequences are kept
                take(inbox.get_nowait())
        except queue.Empty:
            pass
        if not alive():
            break
        if stop.is_set() or not waiting:
            continue
        seq = _sequence(waiting.popleft())
        try:
            learner.learn(seq)
        except Exception:  # a learner bug must never take serving down
            log.exception("online learner failed on a sequence of %s", seq.device)
        learnt += 1
        if learner.adapters is not None:
            entry = learner.adapters.entry(seq.device)
            if entry is not None:
                outbox.put(("adapter", seq.device, _numpy(entry)))
        outbox.put(("counters", _counters(learner, pacer, dropped, taken, learnt)))
        pacer.rest()  # after its reports: what comes meanwhile (a command, a stop) is taken at once
    outbox.put(("counters", _counters(learner, pacer, dropped, taken, learnt)))
    outbox.put(("stopped",))


def _discard(inbox, outbox, timeout: float = 5.0) -> None:
    """Close the queues of a learner process that has ended. What its inbox still holds is read off the pipe as
    bytes (the dead process may have left a message half read, and the queue's lock held): else the queue's
    feeder thread, with more than the pipe holds to write, waited for a reader for ever."""
    try:
        inbox.cancel_join_thread()
        reader, deadline = inbox._reader, time.monotonic() + timeout
        while time.monotonic() < deadline:
            if reader.poll(0.05):
                os.read(reader.fileno(), 1 << 16)
            elif not inbox._buffer:  # all written, all read
                break
        inbox.close()
        outbox.close()
    except (AttributeError, OSError, EOFError, ValueError):  # not multiprocessing's queues, or closed already
        pass


def _child(config: LearnerConfig, inbox, outbox, parent: int) -> None:
    """The learner process: one thread, below serving in priority, gone with its parent. Its first message
    (``_spawn``) brings the model, the adapters and ``versions``: those a restarted learner lists without a
    versions folder (with one, the folder lists them)."""
    # Ctrl-C, and a SIGTERM to the whole group (systemd's default KillMode, the demo's killpg), reach it too: the
    # parent stops it (its stop message, SIGKILL beyond its timeout; the kernel's at the parent's end). Before, a
    # group SIGTERM killed it before the parent stopped it: an ERROR 'ended unexpectedly' and a restart at the end
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before that was set
        return
    if config.below_serving:
        _below_serving()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _, model, adapters, versions = inbox.get()  # ("start", ...): the first message, put before the start
    serving, _ = load_checkpoint(model)

    def promoted(new: HARNet, version: str) -> None:
        outbox.put(("model", checkpoint_bytes(new)[0], version, [v.to_dict() for v in learner.versions]))

    learner = OnlineLearner(serving, config, on_promote=promoted,  # a starting model not saved: the parent said so
                            on_update=lambda report: outbox.put(("update", report.to_dict())), warn_start=False)
    if learner.adapters is not None and adapters:
        learner.adapters.load_state_dict({d: _tensors(e) for d, e in adapters.items()})
    if versions is not None:
        learner.versions = [VersionInfo(**v) for v in versions]
    learner_loop(learner, inbox, outbox, alive=lambda: os.getppid() == parent)


class LearnerProcess:
    """The serving side of a learner process: what the consumer calls, as it called the learner.

    ``adapters`` is the serving copy of every device's adapter (``models.personal.DeviceAdapters``,
    applied in the batched pass), kept up to date by ``poll``; ``updates``, ``skipped``, ``dropped``,
    ``rested``, ``save_failures``, ``version``, ``versions`` and ``comparison()`` are the learner's as last reported.
    ``on_promote(model, version)`` and ``on_update(report)`` are called from ``poll``, and so is the
    ``answer`` given with a command (``rollback``, ``promote``): ``answer(model, version, None)`` when the
    learner carried it out (right after ``on_promote`` got the same: no cycle serves them before it is
    called), ``answer(None, None, reason)`` when it refused it, its process ended first, or its weights did
    not come (a message that could not be read here): never ``answer(None, None, None)``.

    A learner process that ends unexpectedly is started again (see the module's docstring): ``restarts`` counts
    them, ``restarting`` is true until the new one runs, ``gave_up`` after ``MAX_QUICK_ENDS`` quick ends in a
    row. The counters (``updates``, ``skipped``, ``dropped``, ``rested``) go on from the earlier lives'.
    """

    RESTART_DELAY = 1.0  # s before the first start again; doubled after each quick end in a row
    RESTART_DELAY_MAX = 60.0
    QUICK_LIFE = 300.0  # s: a learner process that ends sooner after its start ended quickly
    MAX_QUICK_ENDS = 8  # quick ends in a row (after 1, 2, 4 ... 60 s): not started again
    KILL_WAIT = 2.0  # s, at most, for a learner process killed (or terminated) to end, and its threads after it

    def __init__(self, serving: HARNet, config: LearnerConfig, on_promote=None, on_update=None) -> None:
        self.config = config
        self.on_promote = on_promote or (lambda model, version: None)
        self.on_update = on_update or (lambda report: None)
        self._model = checkpoint_bytes(serving)[0]  # the weights served (the last "model"): a restart's
        self._architecture = serving.config.to_dict()  # a rollback must keep it: serving swaps weights only
        self.adapters = (DeviceAdapters(len(serving.config.classes), config.adapter, names=serving.config.classes)
                         if config.adapt in ("device", "both") else None)
        self.version = config.serving_version
        # the starting model saved, and the versions of the folder: the learner process finds the same
        self.versions: list[VersionInfo] = starting_versions(serving, config)
        self.updates = self.skipped = 0
        self.save_failures = 0  # promotions not served: their version could not be written (OnlineLearner)
        self.rested = 0.0
        self._dropped = 0  # sequences the learner dropped (it fell behind)
        self._lost = 0  # sequences not sent: the learner process is gone
        self._overflow = 0  # sequences not sent: the learner took none of the last queue_size sent
        self._pending: deque = deque()  # sequences (as arrays) waiting to be sent, oldest first
        self._sent = self._taken = 0  # sequences sent; taken by the learner, as last reported
        self._learnt = 0  # of those taken, learnt (or failed on), as last reported: the rest it holds, or dropped
        self.lost_sequences = 0  # sent to learner processes that ended unexpectedly, never learnt (also in dropped)
        self._comparison = {"windows": 0, "serving_accuracy": None, "challenger_accuracy": None}
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._inbox = self._context.Queue()
        self._outbox = self._context.Queue()
        # what the learner reports, moved off its pipe by a thread of ours: a message bigger than the pipe
        # (a promoted model's bytes) is written a part at a time, and read on the serving thread it held
        # serving up for as long as the learner (below serving in priority) got no CPU to write the rest
        self._received: queue.SimpleQueue = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._reading = threading.Event()  # cleared: the reader ends once the pipe has nothing more
        self._process = None
        self._stopped = False
        # device -> turns sent to the learner and not yet confirmed ("turned"): an adapter it reports before
        # confirming is of the windows as they came before, and is turned here as the serving copy was
        self._turning: dict[str, list[np.ndarray]] = {}
        # the answers of the commands sent, in the order sent (None: nobody waits for it); the learner takes
        # them in that order and says when it takes one (``_answering``: its answer, until answered)
        self._answers: deque[Callable | None] = deque()
        self._answering: Callable | None = None
        self._early: list[tuple] = []  # commands given before start: sent after its start message (start())
        self._unreadable: str | None = None  # why the last message that could not be read was not, since "command"
        self._resynced: str | None = None  # the version never served it was sent back from, until back on the served
        # supervision: a learner process that ends unless stopped is started again, from a thread (_restarter)
        self.restarts = 0
        self.gave_up = False
        self._halt = threading.Event()  # set by stop: nothing is started again
        self._halting = threading.Lock()  # stop sets _halt, a restarter sets _restarted, under it (see _restart)
        self._born = 0.0  # when the running learner process started (monotonic)
        self._quick_ends = 0  # in a row
        self._restarter: threading.Thread | None = None
        self._keeper: threading.Thread | None = None  # the restarter of the running process: it ends with it
        self._restarted: tuple | Exception | None = None  # (process, inbox, outbox, adapters) it started, or why not
        self._turned_meanwhile: set[str] = set()  # devices turned while one is started again (see _take_up_restarted)
        self._carried = {"updates": 0, "skipped": 0, "dropped": 0, "rested": 0.0,  # the earlier lives' counters
                         "save_failures": 0}

    def start(self) -> LearnerProcess:
        """Start the learner process (it returns at once: what it starts from goes through its inbox, ``_spawn``).
        Once: a stopped one is not started again (its pipes are closed; a restarter its stop left starting a
        process stops that one only while it stays halted)."""
        if self._halt.is_set():
            raise RuntimeError("this learner process was stopped; make a new LearnerProcess to start one again")
        if self._process is not None:
            raise RuntimeError("this learner process is started already")
        process = self._spawn(self._model, self.config, self._adapter_copy(), None, self._inbox, self._outbox)
        for command in self._early:  # after the start message: put before it, the child took one for it and ended
            self._inbox.put(command)
        self._early = []
        self._run(process)
        return self

    def _adapter_copy(self) -> dict:
        # "is not None": DeviceAdapters' len counts the active ones only, and the inactive ones (their comparison
        # too) were left out when none was active
        return {d: _numpy(e) for d, e in (self.adapters.state_dict().items() if self.adapters is not None else ())}

    def _spawn(self, model: bytes, config: LearnerConfig, adapters: dict, versions, inbox, outbox):
        """A learner process started. What it starts from goes through its inbox, first, not as arguments:
        Process.start() writes those into the child's pipe and returns once the child has read them all, so
        the model's 280 kB (more than the pipe holds) held the caller until the child had imported torch (5 s
        on a loaded machine: the consumer's serving thread at every start); the inbox's feeder thread waits for
        that instead."""
        inbox.put(("start", model, adapters, versions))
        process = self._context.Process(target=_child, args=(config, inbox, outbox, os.getpid()),
                                        name="harstream-learner", daemon=True)
        process.start()
        return process

    def _run(self, process) -> None:
        """Take up a started learner process (its queues are ``_inbox`` and ``_outbox``): its reader thread."""
        self._process = process
        self._born = time.monotonic()
        self._stopped = False
        self._reading = threading.Event()
        self._reading.set()
        self._reader = threading.Thread(target=self._read, args=(process, self._outbox, self._reading),
                                        name="harstream-learner-reader", daemon=True)
        self._reader.start()

    def _read(self, process, outbox=None, reading: threading.Event | None = None) -> None:
        """The reader thread: the learner's messages from its pipe (``outbox``, ``_outbox`` by default) to
        ``_received``, until it has stopped (or, told to end by ``reading`` or the process gone, until the pipe
        has nothing more)."""
        outbox = self._outbox if outbox is None else outbox
        reading = self._reading if reading is None else reading
        while True:
            gone = not process.is_alive()  # before reading: all that it wrote is in the pipe by then
            try:
                message = outbox.get(timeout=0.2)
            except queue.Empty:
                if gone or not reading.is_set():
                    return
                continue
            except (EOFError, OSError):  # the pipe closed
                return
            except Exception as exc:  # a message that cannot be unpickled: read whole first, the next ones are intact
                if getattr(outbox, "_closed", False):  # ValueError: the queue closed
                    return
                log.exception("a message from the learner process could not be read; skipped")
                message = ("unreadable", f"{type(exc).__name__}: {exc}"[:200])  # a command's weights, perhaps
            self._received.put(message)
            if message[0] == "stopped":
                return

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def restarting(self) -> bool:
        """The learner process ended unexpectedly and is to be, or is being, started again."""
        return (self._process is not None and not self.gave_up and not self._halt.is_set()
                and (self._restarter is not None or not self._process.is_alive()))

    @property
    def dropped(self) -> int:
        """Sequences never learnt: dropped by a learner that fell behind, sent to none, or lost with a learner
        process that ended (``lost_sequences``)."""
        return self._dropped + self._lost + self._overflow

    def submit(self, sequence: Sequence) -> None:
        """Send ``sequence`` to the learner, never blocking: if it has not taken the last
        ``queue_size`` sent, the sequence waits here, and beyond ``queue_size`` waiting the oldest
        waiting is dropped (counted in ``dropped``)."""
        if not self.alive and not self.restarting:  # never started, stopped, or not started again (gave_up)
            if self._lost == 0 and self._process is not None:
                log.error("the learner process has stopped (exit code %s): labels are no longer learnt",
                          self._process.exitcode)
            self._lost += 1 + len(self._pending)
            self._pending.clear()
            return
        if len(self._pending) >= self.config.queue_size:
            self._pending.popleft()
            self._overflow += 1
        self._pending.append(_arrays(sequence))
        if self.alive:  # else they wait for the learner process started again
            self._send()

    def _send(self) -> None:
        """Send waiting sequences, oldest first, while fewer than ``queue_size`` are in flight."""
        while self._pending and self._sent - self._taken < self.config.queue_size:
            self._inbox.put(("sequence", self._pending.popleft()))
            self._sent += 1

    def turn(self, device: str, Q) -> None:
        """The device's windows come turned by ``Q`` (3, 3) more from now on (``Orienter.on_turn``): its
        adapter here and in the learner, and its sequences waiting for the learner, are turned with them."""
        Q = np.asarray(Q, dtype=np.float32)
        if self.adapters is not None:
            self.adapters.turn(device, Q)
        self._pending = deque(_turned(item, Q) if item[0] == device else item for item in self._pending)
        if self.alive:
            self._inbox.put(("turn", device, Q))
            self._turning.setdefault(device, []).append(Q)
        elif self._restarter is not None:  # copied for the one started again before or after: sent it anew
            self._turned_meanwhile.add(device)

    def _check_running(self) -> None:
        """A command to a learner process that has ended would be accepted and never carried out (after ``stop``
        too: put in an inbox no one reads)."""
        if self._process is None and self._halt.is_set():
            raise ValueError("the learner process was stopped")
        if self._process is not None and not self._process.is_alive():
            again = "; it is being started again: try again shortly" if self.restarting else ""
            raise ValueError(f"the learner process has stopped (exit code {self._process.exitcode}){again}")

    def rollback(self, version: str, answer: Callable | None = None) -> None:
        """Serve (and keep training from) an earlier saved version; the new weights come through
        ``poll`` (``on_promote``), then ``answer`` (see the class). ValueError for one refused at once."""
        self._check_running()
        info = next((v for v in self.versions if v.version == version), None)
        if info is None:
            raise ValueError(f"unknown model version {version!r}")
        if info.path is None:
            raise ValueError(f"version {version!r} was not saved to a file; it cannot be restored")
        # the versions folder lists every checkpoint in it, a model of other classes or shape too (one a
        # consumer started with another --model left there): serving cannot swap to it (the consumer's
        # set_model refuses, in its serving loop) and the learner's adapters do not fit it
        try:
            blob = torch.load(info.path, map_location="cpu", weights_only=True, mmap=True)
            config = blob.get("config") if isinstance(blob, dict) else None
        except Exception as exc:  # gone, truncated, not a torch file
            raise ValueError(f"version {version!r} cannot be read: {exc}") from None
        try:  # as load_checkpoint reads it (a field added to ModelConfig since takes its default)
            config = stored_config(config).to_dict()
        except (TypeError, ValueError):  # not a config (None, a field unknown or malformed)
            pass
        if config != self._architecture:
            raise ValueError(f"version {version!r} is a model of another architecture (classes "
                             f"{(config or {}).get('classes')}); it cannot replace the serving model")
        self._put_command(("rollback", version))
        self._answers.append(answer)

    def promote(self, metrics: dict | None = None, answer: Callable | None = None) -> None:
        """Serve the challenger's weights; they come through ``poll`` (``on_promote``), then ``answer``."""
        self._check_running()
        self._put_command(("promote", metrics or {}))
        self._answers.append(answer)

    def _put_command(self, command: tuple) -> None:
        if self._process is None:  # not started yet (_check_running): it goes after the start message
            self._early.append(command)
        else:
            self._inbox.put(command)

    def comparison(self) -> dict:
        return dict(self._comparison)

    def poll(self, limit: int = 1000) -> int:
        """Apply what the learner reported since the last call (the serving thread, once a cycle), up to and
        including the first new weights: the next come at the next call, so that each version is served (and
        said to be served) in turn; returns how many messages."""
        n = 0
        while n < limit:
            try:
                message = self._received.get_nowait()
            except queue.Empty:
                break
            n += 1
            self._apply(message)
            if message[0] == "model":
                # the consumer keeps one swap a cycle: a second in this call replaced the first unserved (two
                # rollbacks in a row: the first's model message was never published, its `harstream versions`
                # waited its --timeout; an automatic promotion before a command was never served nor recorded)
                break
        if self._pending and self.alive:
            self._send()  # the learner may have taken some since
        if self._process is not None and not self._process.is_alive():
            self._writer_gone()
        if ((self._answers or self._answering) and self._reader is not None and not self._reader.is_alive()
                and self._received.empty()):  # the process ended and all it said is applied: no answer comes
            code = self._process.exitcode if self._process is not None else None
            pending, self._answers = [self._answering, *self._answers], deque()
            self._answering = None
            for answer in pending:
                if answer is not None:
                    answer(None, None, f"the learner process stopped (exit code {code}) before carrying it out")
        self._supervise()
        return n

    def _supervise(self) -> None:
        """Start a learner process that ended unexpectedly again, once all it said is applied (the pending
        commands answered above, its last weights served); take up the one a restarter started."""
        if self._restarter is not None:
            if self._restarted is not None or not self._restarter.is_alive():  # it stays while its process runs
                self._take_up_restarted()
            return
        if (self._process is None or self._halt.is_set() or self.gave_up or self._process.is_alive()
                or (self._reader is not None and self._reader.is_alive()) or not self._received.empty()
                or self._answers or self._answering is not None):
            return
        code, lived = self._process.exitcode, time.monotonic() - self._born
        self._quick_ends = self._quick_ends + 1 if lived < self.QUICK_LIFE else 0
        # sent and never learnt, gone with it: not taken, or taken (off the pipe, waiting in its inbox, or at hand)
        # and neither learnt nor dropped, as it last reported; those it learnt since are counted lost too
        untaken = max(0, self._sent - self._taken)
        unlearnt = max(0, self._taken - self._learnt - (self._dropped - self._carried["dropped"]))
        self._lost += untaken + unlearnt
        self.lost_sequences += untaken + unlearnt
        if untaken + unlearnt:
            log.warning("%d labelled sequences sent to the learner process that ended were never learnt (%d it had "
                        "taken, %d not yet): lost (learner.lost_sequences %d)", untaken + unlearnt, unlearnt,
                        untaken, self.lost_sequences)
        self._sent = self._taken = self._learnt = 0
        self._carried = {"updates": self.updates, "skipped": self.skipped, "dropped": self._dropped,
                         "rested": self.rested, "save_failures": self.save_failures}
        self._turning.clear()  # the adapters it starts with are turned already
        self._turned_meanwhile = set()
        self._resynced = self._unreadable = None
        if self._quick_ends >= self.MAX_QUICK_ENDS:
            self.gave_up = True
            self._lost += len(self._pending)
            self._pending.clear()
            log.error("the learner process ended (exit code %s) %.1f s after its start, the %d-th time in a row "
                      "within %.0f s: it is not started again, and labels are no longer learnt until the consumer "
                      "restarts (metrics learner.alive false, learner.restarts %d)", code, lived,
                      self._quick_ends, self.QUICK_LIFE, self.restarts)
            return
        delay = min(self.RESTART_DELAY_MAX, self.RESTART_DELAY * 2 ** max(0, self._quick_ends - 1))
        # what it starts from, taken here (the serving thread changes the version); the adapters are copied by the
        # restarter: 0.5 s for 10,000 devices, which this thread would not serve during
        config = dataclasses.replace(self.config, serving_version=self.version)
        versions = None if config.versions_dir is not None else [v.to_dict() for v in self.versions]
        log.error("the learner process ended unexpectedly (exit code %s) %.1f s after its start; starting it again "
                  "in %.1f s from the model served, %s (restart %d)", code, lived, delay, self.version,
                  self.restarts + 1)
        args = (delay, self._model, config, versions, self._inbox, self._outbox)
        self._restarted = None
        self._restarter = threading.Thread(target=self._restart, args=args, name="harstream-learner-restarter",
                                           daemon=True)
        self._restarter.start()

    def _restart(self, delay: float, model: bytes, config: LearnerConfig, versions, old_inbox, old_outbox) -> None:
        """The restarter thread: after ``delay`` (unless stopped meanwhile), a learner process on new queues (the
        dead one may have held the old ones' locks), with the serving side's adapters. Meanwhile the serving
        thread changes them only by ``turn`` (nothing comes from a learner): those turned are sent anew. It then
        stays until that process ends (``_restarted`` says it started one): the process dies with this thread."""
        _discard(old_inbox, old_outbox)
        if self._halt.wait(max(0.0, delay)):
            return
        try:
            for _ in range(3):
                try:
                    adapters = self._adapter_copy()
                    break
                except RuntimeError:  # the adapters changed while copied (dictionary changed size)
                    continue
            else:
                adapters = self._adapter_copy()
            if self._halt.is_set():
                return
            inbox, outbox = self._context.Queue(), self._context.Queue()
            process = self._spawn(model, config, adapters, versions, inbox, outbox)
            count = len(adapters)
            # in the inbox now: this thread stays for the process's life, and kept the copy as long (10 MB for
            # 10,000 devices, beside the serving copy)
            del adapters
        except Exception as exc:  # no memory, no process left: taken as a quick end
            self._restarted = exc
            return
        # stop waits for Process.start (a second, more on a loaded machine) until its timeout only: stopped
        # meanwhile, the process is stopped here; else stop takes it from _restarted and stops it
        with self._halting:
            halted = self._halt.is_set()
            if not halted:
                self._restarted = (process, inbox, outbox, count)
        if halted:
            process.kill()
            process.join(self.KILL_WAIT)
            _discard(inbox, outbox, timeout=self.KILL_WAIT)
            return
        # the kernel kills the process when the thread that started it ends (PR_SET_PDEATHSIG, which the child
        # sets once it runs): this thread waits for it to end. Ending here killed the learner started again
        # whenever the child got that far first (a thread held up by the GIL, or a slow exit)
        multiprocessing.connection.wait([process.sentinel])

    def _take_up_restarted(self) -> None:
        """The serving thread: serve through the learner process the restarter started."""
        restarter, started = self._restarter, self._restarted
        self._restarter = self._restarted = None
        if self._halt.is_set():
            return
        if isinstance(started, BaseException) or started is None:
            log.error("the learner process could not be started again: %s", started)
            self._born = time.monotonic()  # a quick end, at once: the next try waits longer
            self._supervise()
            return
        process, self._inbox, self._outbox, adapters = started
        self._keeper = restarter
        self.restarts += 1
        self._run(process)
        log.warning("the learner process started again (pid %s, restart %d) with %d device adapters", process.pid,
                    self.restarts, adapters)
        if self._turned_meanwhile and self.adapters is not None:  # copied turned, not yet turned, or half turned
            entries = {d: self.adapters.entry(d) for d in self._turned_meanwhile}
            self._inbox.put(("adapters", {d: _numpy(e) for d, e in entries.items() if e is not None}))
        self._turned_meanwhile = set()
        self._send()

    def _writer_gone(self) -> None:
        """The learner process has ended: close our end for writing its pipe (we never write it; its end died
        with it). A message it left half written (killed while writing weights a part at a time) then ends in
        EOFError for the reader, which waited for the rest forever: the commands pending were never answered."""
        try:
            self._outbox._writer.close()
        except (AttributeError, OSError):  # a queue without it (not multiprocessing's), or closed already
            pass

    def _apply(self, message: tuple) -> None:
        kind = message[0]
        if kind == "update":
            self.on_update(UpdateReport(**message[1]))
        elif kind == "adapter":
            _, device, entry = message
            if self.adapters is not None:
                self.adapters.load_state_dict({device: _tensors(entry)})
                self.adapters.updates += 1
                for Q in self._turning.get(device, ()):  # learnt before the learner turned it
                    self.adapters.turn(device, Q)
        elif kind == "turned":
            turns = self._turning.get(message[1])
            if turns:
                turns.pop(0)
                if not turns:
                    del self._turning[message[1]]
        elif kind == "counters":
            c, carried = message[1], self._carried  # a restarted learner counts from 0
            self.updates, self.skipped = carried["updates"] + c["updates"], carried["skipped"] + c["skipped"]
            self.save_failures = carried["save_failures"] + c.get("save_failures", 0)
            self._dropped = carried["dropped"] + c["dropped"]
            self._taken = c["taken"]
            self._learnt = c.get("learnt", c["taken"] - c["dropped"])
            self.rested, self._comparison = carried["rested"] + c["rested"], c["comparison"]
            self._check_version(c.get("version"))
        elif kind == "model":
            _, data, version, versions = message
            model, _ = load_checkpoint(data)
            self._model = data  # served from now on: a learner process started again starts from it
            self.version = version
            self.versions = [VersionInfo(**v) for v in versions]
            if self.alive:  # its file is kept from now on (keep_versions), the one served before may go
                self._inbox.put(("served", version))
            self.on_promote(model, version)
            answer, self._answering = self._answering, None  # between "command" and "answered": the command's
            if answer is not None:
                answer(model, version, None)
        elif kind == "command":  # the learner took the oldest command sent
            self._answering = self._answers.popleft() if self._answers else None
            self._unreadable = None
        elif kind == "unreadable":
            self._unreadable = message[1]
        elif kind == "answered":
            answer, self._answering = self._answering, None
            reason = message[2]
            if reason is None:  # carried out, but no weights came: the serving side serves what it served
                reason = (f"the learner process carried out the {message[1]}, but its weights could not be read "
                          f"here ({self._unreadable}); it is sent back to {self.version}"
                          if self._unreadable is not None else
                          f"the learner process carried out the {message[1]} but sent no weights")
            if answer is not None:  # not answered by weights: refused, or the weights lost on the way
                answer(None, None, reason)
        elif kind == "stopped":
            self._stopped = True

    def _check_version(self, learnt: str | None) -> None:
        """The learner reports the version it trains from after every message it sent before, weights included:
        one other than the version served here is one whose weights could not be read here (a command's, or an
        automatic promotion's). It would train, and compare its challenger, from weights never served, and its
        next promotion would be served as their child. It is sent back to the version served (``resync``),
        once per such drift (its counters name that version until it has gone back); it stays on its own if it has
        moved on meanwhile. Back on the version served, it is sent back again should it come to that version again
        (a rollback to it whose weights again could not be read): marked for good, it trained on from them."""
        if learnt == self.version:
            self._resynced = None
        if learnt is None or learnt == self.version or learnt == self._resynced or not self.alive:
            return
        log.warning("the learner process trains from %s, whose weights never reached serving (serving %s): "
                    "sending it back to %s", learnt, self.version, self.version)
        self._resynced = learnt
        self._inbox.put(("resync", learnt, self.version))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the learner after the sequence at hand and apply all it reported (its last adapters
        included, so that a checkpoint taken next has them). It returns within ``timeout``, plus what a process
        killed (or terminated) then takes to end (``KILL_WAIT``, a few times at most): a restart under way waited
        up to 30 s more for Process.start, which a loaded machine can hold longer."""
        deadline = time.monotonic() + timeout
        with self._halting:
            self._halt.set()  # nothing is started again
        if self._restarter is not None:  # a learner process it starts now is stopped at once: it learnt nothing
            restarter = self._restarter
            while self._restarted is None and restarter.is_alive() and time.monotonic() < deadline:
                restarter.join(0.01)  # it stays while the process it started runs: until it has started one
            with self._halting:  # None: it started none yet, and stops the one it starts (_restart)
                started, self._restarted, self._restarter = self._restarted, None, None
            if isinstance(started, tuple):
                process, inbox, outbox, _ = started
                process.kill()
                process.join(self.KILL_WAIT)
                _discard(inbox, outbox, timeout=self.KILL_WAIT)
            # it ends with the process it started; still starting one at the deadline, it is left to stop it
            restarter.join(self.KILL_WAIT if isinstance(started, tuple) else max(0.0, deadline - time.monotonic()))
        if self._process is None:
            return
        self._pending.clear()  # not sent: like those the learner has not taken, dropped uncounted
        if self._process.is_alive():
            self._inbox.put(("stop",))
            while not self._stopped and time.monotonic() < deadline and self._process.is_alive():
                self.poll()
                time.sleep(0.01)
            self.poll()
            self._process.join(max(0.0, deadline - time.monotonic()))
        if self._process.is_alive():  # it ignores SIGTERM (a group's SIGTERM is not for it): killed
            log.warning("the learner process did not stop within %.0f s; killing it", timeout)
            self._process.kill()
            self._process.join(self.KILL_WAIT)
        self._reading.clear()  # what is still in the pipe is read, then the reader ends
        if not self._process.is_alive():
            self._writer_gone()  # a message the terminated learner left half written ends the reader too
        if self._reader is not None:
            self._reader.join(self.KILL_WAIT)
        if self._keeper is not None and not self._process.is_alive():  # the thread that started it: it ends now
            self._keeper.join(self.KILL_WAIT)
            self._keeper = None
        self.poll()
        self._inbox.cancel_join_thread()  # sequences not taken are dropped, not waited for
        self._process = None
