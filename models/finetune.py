"""Online fine-tuning with truncated backpropagation through time, beside serving.

Labelled windows arrive as sequences of one device, with the state the device had before the
first one. A challenger (a copy of the serving model) replays each sequence from that state; the
error is backpropagated through at most ``k2`` windows and the weights are updated every ``k1``
windows, with gradient clipping by norm. A replay buffer mixes older labelled sequences into every
update, so that learning one person's squats does not erase everything else.

Promotion is prequential: each new sequence first scores the challenger and the serving model
(neither has trained on it), then trains the challenger. When the challenger does at least as
well as the serving model over the last ``promotion_windows`` such windows, it is promoted.
A rollback starts over from the version rolled back to (the challenger, the scores, the updates
counted since a promotion) and only sequences labelled after it score: those labelled before and
learnt after (a learner behind its labels holds up to ``queue_size``) still train the challenger, but
decide no promotion, which would undo the rollback on no evidence gathered since.

What learns is a setting (``adapt``), decided by measurement (``benchmarks/personal.py``,
``docs/personal.md``): ``device`` (the default) trains a small adapter per labelling device on the
frozen shared network (``models.personal``); ``shared`` fine-tunes the shared network as above;
``both`` does both, the shared network learning from windows as the device's adapter sees them.
Fine-tuning the shared network from the labelling devices lowered the accuracy of the devices that
send no labels (96% to 78% in the first minute); adapters leave them exactly as they were.
"""

from __future__ import annotations

import copy
import errno
import logging
import math
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import FORMAT, checkpoint_bytes, load_checkpoint, save_checkpoint, write_atomic
from models.personal import AdapterConfig, DeviceAdapters
from models.rnn import HARNet

__all__ = ["LearnerConfig", "OnlineLearner", "Pacer", "Sequence", "OPTIMISERS", "VersionNotSaved", "saved_versions",
           "starting_versions"]

log = logging.getLogger(__name__)
FORGOT_SHOWN = 5  # version ids named in the "forgot N old versions" line
SAVE_WARN_EVERY = 60.0  # s: versions that cannot be saved are logged again at most this often

OPTIMISERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
ADAPT = ("device", "shared", "both")  # what learns from labels: per-device adapters, the shared network, both


@dataclass
class Sequence:
    """Consecutive labelled windows of one device."""

    device: str
    windows: torch.Tensor  # (L, window, C): the model's input channels
    targets: torch.Tensor  # (L,) class index, -1 where unknown
    state: tuple[torch.Tensor, ...]  # state before the first window, each (layers, hidden)
    labelled: float = field(default_factory=time.monotonic)  # when its labels were settled (the consumer made
    # it), on the machine's monotonic clock, which its processes share: one from before a rollback scores nothing


@dataclass
class LearnerConfig:
    k1: int = 4  # windows between weight updates
    k2: int = 4  # windows the error is backpropagated through, at most (k2 > k1 makes segments overlap;
    # k2 < k1 cuts the k1 windows into pieces of k2, the state carried on detached between them)
    optimiser: str = "adam"  # adam | rmsprop | sgd
    lr: float = 1e-3
    clip: float = 1.0  # gradient norm clipping
    replay_size: int = 512  # labelled sequences kept for replay
    replay_per_update: int = 8  # older sequences mixed into every update
    promotion_windows: int = 24  # recent untrained windows the promotion compares on
    min_updates_between_promotions: int = 2
    min_updates_between_ties: int = 20  # a challenger only as good as serving (a tie) waits this many updates
    # since the last promotion; one strictly better waits min_updates_between_promotions (with steady labels
    # ties were 3 promotions in 4, a version every 24 labelled windows: piles of files, nothing gained)
    queue_size: int = 256  # sequences waiting for the learner, in its process and again in the serving one
    # (models.learner_process); the oldest waiting are dropped beyond
    cpu_share: float = 0.2  # of one core, at most, over time: after learning for c CPU seconds the
    # learner rests c * (1 / cpu_share - 1) seconds (0 or less, or 1 or more: no limit); what it cannot take in time
    # waits in the queue, and the oldest is dropped beyond queue_size (counted in ``dropped``)
    below_serving: bool = True  # the learner process runs only on CPU that nothing else wants (SCHED_IDLE,
    # else niceness 19): it starves, and drops sequences, while other work fills every core; False: it keeps
    # its parent's priority, still paced by cpu_share
    versions_dir: Path | None = None  # where every version is saved, the starting one too (None: not saved)
    keep_versions: int | None = None  # versions kept (listed, and their files), at most: beyond, a promotion
    # deletes the oldest promoted one that is not served; models a learner started from are always kept. None
    # (default): every one, as a rollback to any version is promised; about one version per promotion_windows
    # labelled windows in shared fine-tuning, each a file of the model's size (`consume --keep-versions N`)
    # a promoted version is not written where the versions folder's file system would have less free than the larger
    # of these left: unbounded versions (keep_versions None) fill a disk, 4.7 GB a day at one version per 5 s of
    # 280 kB; then every other write there (checkpoints, events) failed too
    min_free_bytes: int = 100_000_000
    min_free_fraction: float = 0.01  # of the file system's size
    serving_version: str = "base"
    adapt: str = "device"  # device | shared | both (see the module's docstring)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self) -> None:
        if self.adapt not in ADAPT:
            raise ValueError(f"Invalid 'adapt' {self.adapt!r}. Valid values are: {', '.join(ADAPT)}")
        if self.optimiser not in OPTIMISERS:
            raise ValueError(f"Invalid 'optimiser' {self.optimiser!r}. Valid values are: {', '.join(OPTIMISERS)}")
        if self.k1 < 1 or self.k2 < 1:
            raise ValueError("'k1' and 'k2' must be at least 1")
        if self.keep_versions is not None and self.keep_versions < 1:
            raise ValueError("'keep_versions' must be at least 1 (None: keep every version)")


class Pacer:
    """Keeps the thread that calls it to ``share`` of one core: after a piece of work that took c CPU
    seconds, ``rest`` sleeps c * (1 / share - 1) (0 < share < 1; otherwise it never rests). A ``wait`` that
    works while it rests (the learner process takes its messages then) has that work counted in the next rest."""

    def __init__(self, share: float, stop: threading.Event | None = None,
                 wait: Callable[[float], object] | None = None) -> None:
        self.share = share
        self.rested = 0.0  # seconds spent resting
        self._stop = stop or threading.Event()  # set: no more resting
        self._wait = wait or self._stop.wait  # sleeps that long, or less if stopped
        self._mark = time.thread_time()

    def rest(self) -> None:
        """Rest for the CPU used since the last rest."""
        now = time.thread_time()
        rest = max(0.0, now - self._mark) * (1.0 / self.share - 1.0) if 0 < self.share < 1 else 0.0
        # marked before the wait: the CPU the wait itself takes (a command taken meanwhile) is work too. Marked
        # after it, that went uncounted: a 40 ms command every 200 ms took the learner to 0.385 of a core at 0.25
        self._mark = now
        if rest:
            self.rested += rest
            self._wait(rest)


@dataclass
class UpdateReport:
    t: float
    version: str
    loss: float
    grad_norm: float
    clipped: bool
    skipped: bool
    windows: int

    def to_dict(self) -> dict:
        return {"t": self.t, "version": self.version, "loss": self.loss, "grad_norm": self.grad_norm,
                "clipped": self.clipped, "skipped": self.skipped, "windows": self.windows}


@dataclass
class VersionInfo:
    version: str
    created: float
    parent: str | None
    metrics: dict = field(default_factory=dict)
    path: str | None = None

    def to_dict(self) -> dict:
        return {"version": self.version, "created": self.created, "parent": self.parent,
                "metrics": self.metrics, "path": self.path}


INCOMING = "incoming.pt"  # a promoted version while it is being written, in versions_dir


class VersionNotSaved(OSError):
    """A promoted version that could not be written to the versions folder (disk full or below the floor kept
    free, folder gone or read-only): it is not served, as every version served has its file to roll back to."""


def _saved(path: Path) -> VersionInfo | None:
    """What a version's file says of it (its metadata: the weights are mapped, not read); None for a
    file that is not a checkpoint."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated, not a torch file, refused globals
        log.warning("ignoring %s in the versions folder: %s", path, exc)
        return None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        log.warning("ignoring %s in the versions folder: not a harstream checkpoint", path)
        return None
    meta = blob.get("metadata") or {}
    metrics = meta.get("online")
    return VersionInfo(path.stem, float(meta.get("saved_at", path.stat().st_mtime)), meta.get("parent"),
                       metrics if isinstance(metrics, dict) else {}, str(path))


def saved_versions(directory: Path) -> list[VersionInfo]:
    """Every version saved in ``directory`` (``<version>.pt``), in the order they were made."""
    if not directory.is_dir():
        return []
    infos = [_saved(p) for p in directory.glob("*.pt") if p.name != INCOMING]
    return sorted((v for v in infos if v is not None), key=lambda v: (v.created, v.version))


def starting_versions(serving: HARNet, config: LearnerConfig, warn: bool = True) -> list[VersionInfo]:
    """The versions a learner starts with. With ``versions_dir``: the starting model
    (``serving_version``) is saved there as ``<version>.pt`` unless that file is there already (a
    restart), and every version in the folder is listed, in the order they were made, so that any of
    them can be rolled back to. Without: the starting version alone, which cannot be restored.

    A starting model that cannot be written there (a full disk, a folder gone or read-only) is served all the
    same, without a file to roll back to: it is the model the consumer was given (``--model``, or its state
    directory's), which is on disk already. A WARNING says so (not with ``warn`` False: the learner process, whose
    consumer said it); a later start saves it. Before, the OSError ended a consumer started on a full disk."""
    version, directory = config.serving_version, config.versions_dir
    versions = []
    if directory is not None:
        path = directory / f"{version}.pt"
        if version in ("", ".", "..") or Path(version).name != version or path.name == INCOMING:
            log.warning("the starting version %r cannot name a file: not saved, no rollback to it", version)
        elif not path.exists():
            try:
                directory.mkdir(parents=True, exist_ok=True)
                save_checkpoint(path, serving, {"parent": None, "online": {}})
            except OSError as exc:  # write_atomic leaves no partial file
                if warn:
                    log.warning("the starting model %s is not saved as %s (%s): it is served all the same, from the "
                                "model file it was read from, but cannot be rolled back to until a start saves it",
                                version, path, exc)
        versions = saved_versions(directory)
    if all(v.version != version for v in versions):
        versions.append(VersionInfo(version, time.time(), None))
    return versions


class OnlineLearner:
    """Trains a challenger (and per-device adapters) on labelled sequences; hands promoted weights to
    ``on_promote(model, version)`` and every update's report to ``on_update(report)``.

    It runs wherever ``learn`` is called: the consumer runs it in a process of its own
    (``models.learner_process``); tests and benchmarks call it directly.
    """

    def __init__(self, serving: HARNet, config: LearnerConfig, on_promote=None, on_update=None,
                 warn_start: bool = True) -> None:
        self.config = config
        self.on_promote = on_promote or (lambda model, version: None)
        self.on_update = on_update or (lambda report: None)
        self.serving = copy.deepcopy(serving).eval()
        self.challenger = copy.deepcopy(serving).train()
        self._make_optimiser()
        self._replay: list[Sequence] = []
        self._seen = 0  # sequences offered to the replay reservoir
        self._scores: deque[tuple[int, int]] = deque(maxlen=config.promotion_windows)  # (serving ok, challenger ok)
        self._lock = threading.Lock()
        self.updates = 0
        self.skipped = 0  # updates skipped for a non-finite loss or gradient
        self._since_promotion = 0
        self._rolled_back = -math.inf  # time.monotonic() of the last rollback: sequences labelled before do not score
        self.version = config.serving_version
        # what the serving side serves (``served``), none of which is forgotten. Called directly, what is handed over
        # is served. In a learner process (``confirmed``, set by learner_loop) the serving side says what it serves
        # (``is_served``), and the versions handed over since may be served yet (``_handed``): one whose weights it
        # could not read never is (models.learner_process, "resync")
        self.served = config.serving_version
        self.confirmed = False
        self._handed: list[str] = []
        self.versions: list[VersionInfo] = starting_versions(self.serving, config, warn_start)
        # promotions not served because their version could not be written (_not_saved): one warning, then at
        # most one a minute; before, a full disk made a traceback of every labelled sequence (143 in 48 s)
        self.save_failures = 0
        self._save_failing = False  # the last version tried could not be written
        self._save_said = 0.0  # when that was last logged (_clock)
        self._save_unsaid = 0  # failures since
        self._clock = time.monotonic
        self.rng = random.Random(0)
        self.shared = config.adapt in ("shared", "both")
        self.adapters = (DeviceAdapters(len(serving.config.classes), config.adapter)
                         if config.adapt in ("device", "both") else None)

    def _make_optimiser(self) -> None:
        cls = OPTIMISERS[self.config.optimiser]
        self.optimiser = cls(self.challenger.parameters(), lr=self.config.lr)

    # -- the learning step ---------------------------------------------------------------------
    def learn(self, sequence: Sequence) -> list[UpdateReport]:
        """Test then train on one sequence: the device's adapter and/or the shared challenger, which
        may then be promoted."""
        reports = []
        if self.adapters is not None:
            with self._lock:
                serving = self.serving
            r = self.adapters.learn(serving, sequence.device, sequence.windows, sequence.targets,
                                    sequence.state)
            if r is not None:
                report = UpdateReport(time.time(), f"{self.version}+adapter:{sequence.device}", r["loss"],
                                      r["grad_norm"], r["clipped"], r["skipped"], int(sequence.windows.shape[0]))
                reports.append(report)
                self.on_update(report)
            if self.shared:  # the shared network learns what the adapter leaves
                sequence = Sequence(sequence.device, self.adapters.transform(sequence.device, sequence.windows),
                                    sequence.targets, sequence.state, sequence.labelled)
        if self.shared:
            if sequence.labelled >= self._rolled_back:  # else held out from a challenger and serving model since
                self._score(sequence)  # replaced (a rollback): no evidence of how they compare
            trained = self._train(sequence)
            reports += trained
            if not any(r.skipped for r in trained):  # a sequence whose loss was not finite would spoil
                self._remember(sequence)  # every later update that replays it
            self._maybe_promote()
        return reports

    @torch.no_grad()
    def _predict(self, model: HARNet, seq: Sequence) -> torch.Tensor:
        was_training = model.training
        model.eval()
        state = tuple(s.unsqueeze(1) for s in seq.state)
        logits, _ = model.step_logits(seq.windows.reshape(1, -1, seq.windows.shape[-1]), state)
        model.train(was_training)
        return model.window_logits(logits[0]).argmax(dim=1)

    def _score(self, seq: Sequence) -> None:
        known = seq.targets >= 0
        if not known.any():
            return
        serving = self._predict(self.serving, seq)
        challenger = self._predict(self.challenger, seq)
        for s, c, y in zip(serving[known], challenger[known], seq.targets[known], strict=True):
            self._scores.append((int(s == y), int(c == y)))

    def _batch(self, seq: Sequence) -> list[Sequence]:
        """The new sequence plus replayed older ones of the same length."""
        same = [s for s in self._replay if s.windows.shape[0] == seq.windows.shape[0]]
        k = min(self.config.replay_per_update, len(same))
        return [seq, *self.rng.sample(same, k)]

    def _train(self, seq: Sequence) -> list[UpdateReport]:
        cfg = self.config
        batch = self._batch(seq)
        x = torch.stack([s.windows for s in batch])  # (B, L, window, C)
        y = torch.stack([s.targets for s in batch])  # (B, L)
        state = tuple(torch.stack([s.state[i] for s in batch], dim=1) for i in range(len(seq.state)))
        L = x.shape[1]
        reports = []
        loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
        self.challenger.train()
        states = {0: state}  # detached state before window w
        j = 0
        while j < L:
            # TBPTT(k1, k2): the loss of the next k1 windows, backpropagated through the last k2
            end = min(L, j + cfg.k1)
            start = min(j, max(0, end - cfg.k2))
            st = states[start]
            logits = []
            for w in range(start, end):
                if (w - start) % cfg.k2 == 0 and w > start:  # k2 < k1: no error flows further back than k2
                    st = tuple(s.detach() for s in st)
                out, st = self.challenger(x[:, w], st)
                if w >= j:
                    logits.append(out)
                    states[w + 1] = tuple(s.detach() for s in st)
            target = y[:, j:end]
            j = end
            if (target < 0).all():
                continue
            logits_t = torch.stack(logits, dim=1)  # (B, k1, K)
            loss = loss_fn(logits_t.reshape(-1, logits_t.shape[-1]), target.reshape(-1))
            self.optimiser.zero_grad(set_to_none=True)
            skipped = not bool(torch.isfinite(loss))
            norm = float("nan")
            if not skipped:
                loss.backward()
                norm = float(nn.utils.clip_grad_norm_(self.challenger.parameters(), cfg.clip))
                skipped = not math.isfinite(norm)
            if skipped:  # never step on a non-finite loss or gradient
                self.skipped += 1
                self.optimiser.zero_grad(set_to_none=True)
            else:
                self.optimiser.step()
                self.updates += 1
                self._since_promotion += 1
            report = UpdateReport(time.time(), self.version, float(loss.detach()), norm,
                                  (not skipped) and norm > cfg.clip, skipped, len(logits))
            reports.append(report)
            self.on_update(report)
        return reports

    def _remember(self, seq: Sequence) -> None:
        """Reservoir sampling: every sequence seen has the same chance to stay for replay."""
        self._seen += 1
        if len(self._replay) < self.config.replay_size:
            self._replay.append(seq)
        else:
            i = self.rng.randrange(self._seen)
            if i < self.config.replay_size:
                self._replay[i] = seq

    def comparison(self) -> dict:
        n = len(self._scores)
        serving = sum(s for s, _ in self._scores)
        challenger = sum(c for _, c in self._scores)
        return {"windows": n, "serving_accuracy": serving / n if n else None,
                "challenger_accuracy": challenger / n if n else None}

    def _maybe_promote(self) -> None:
        cfg = self.config
        cmp = self.comparison()
        if cmp["windows"] < cfg.promotion_windows or self._since_promotion < cfg.min_updates_between_promotions:
            return
        if cmp["challenger_accuracy"] < cmp["serving_accuracy"]:
            return
        tie = cmp["challenger_accuracy"] == cmp["serving_accuracy"]
        if tie and self._since_promotion < cfg.min_updates_between_ties:
            return  # at least as good, but nothing shown to gain yet: do not churn versions
        try:
            self.promote(cmp)
        except VersionNotSaved:  # said and counted; the challenger trains on, its scores kept
            self._since_promotion = 0  # the next try comes as the next promotion would, not at every sequence

    def promote(self, metrics: dict | None = None) -> str:
        """Serve the challenger's weights as a new version (saved in ``versions_dir``; beyond
        ``keep_versions`` the oldest promoted one is forgotten). Weights that a kept version already has (a
        challenger that learnt nothing since, or came back to it) are served under that version: no second
        entry, and its file, whose parent it names, is left as it is. A version that cannot be written is not
        served (``VersionNotSaved``; said and counted by ``_not_saved``): nothing changes."""
        from models.checkpoint import _model_version
        new = copy.deepcopy(self.challenger).eval()
        path = None
        with self._lock:
            parent = self.version
            version = _model_version(new)
            known = next((v for v in self.versions if v.version == version), None)
            if known is None and self.config.versions_dir is not None:
                path = self._write_version(new, version, {"parent": parent, "online": metrics or {}})
            self.version = version
            self._hand_over(version)
            self.serving = new
            self._since_promotion = 0
            self._scores.clear()
            if known is None:
                self.versions.append(VersionInfo(version, time.time(), parent, metrics or {},
                                                 str(path) if path else None))
                self._forget_old_versions()
        log.info("promoted model %s (parent %s): %s", version, parent, metrics)
        self.on_promote(copy.deepcopy(new), version)
        return version

    def _write_version(self, model: HARNet, version: str, metadata: dict) -> Path:
        """Write a promoted version as ``<version>.pt`` in ``versions_dir`` (through ``incoming.pt``); its path.
        Not where the file system would be left with less free than the floor (``min_free_bytes``,
        ``min_free_fraction``), nor on an OSError: ``VersionNotSaved``."""
        directory = self.config.versions_dir
        path, tmp = directory / f"{version}.pt", directory / INCOMING
        try:
            data, _ = checkpoint_bytes(model, metadata)
            directory.mkdir(parents=True, exist_ok=True)
            usage = shutil.disk_usage(directory)
            # the bytes floor at most a tenth of a small file system (a 25 MB one could never keep 100 MB free)
            floor = max(min(self.config.min_free_bytes, 0.1 * usage.total), self.config.min_free_fraction * usage.total)
            if usage.free - len(data) >= floor:
                write_atomic(tmp, data)
                tmp.replace(path)
                if self._save_failing:
                    self._save_failing = False
                    log.info("model versions are saved again: %s (%d promotions could not be, learner.save_failures)",
                             path, self.save_failures)
                return path
            full = True
            reason = (f"{usage.free / 1e6:.0f} MB free on its file system: a version of {len(data) / 1e3:.0f} kB "
                      f"would leave less than the {floor / 1e6:.0f} MB kept free")
        except OSError as exc:  # disk full, folder gone or read-only (write_atomic leaves no temporary file)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = str(exc) or type(exc).__name__
            try:
                tmp.unlink(missing_ok=True)  # renamed over <version>.pt it was not
            except OSError:
                pass
        self._not_saved(version, path, reason, full)
        raise VersionNotSaved(f"model version {version} not saved as {path}: {reason}")

    def _not_saved(self, version: str, path: Path, reason: str, full: bool) -> None:
        """Count a version that could not be written; say so once, then at most once a minute while it lasts."""
        self.save_failures += 1
        now = self._clock()
        keep = self.config.keep_versions
        hint = ("; every version is kept (the default): `consume --keep-versions N` bounds the versions folder"
                if keep is None else f"; the versions folder keeps at most {keep} (--keep-versions)") if full else ""
        if not self._save_failing:
            self._save_failing, self._save_said, self._save_unsaid = True, now, 0
            log.warning("model version %s not saved as %s (%s): not served (every version served has its file), the "
                        "challenger trains on and is tried again at the next promotion; further failures are counted "
                        "(learner.save_failures) and said at most once a minute%s", version, path, reason, hint)
        elif now - self._save_said >= SAVE_WARN_EVERY:
            log.warning("model versions still not saved in %s (%s): %d more promotions not served in the last %.0f s "
                        "(learner.save_failures %d)%s", path.parent, reason, self._save_unsaid + 1,
                        now - self._save_said, self.save_failures, hint)
            self._save_said, self._save_unsaid = now, 0
        else:
            self._save_unsaid += 1

    def _hand_over(self, version: str) -> None:
        if self.confirmed:
            self._handed.append(version)
        else:
            self.served = version

    def is_served(self, version: str, handed: str | None = None) -> None:
        """The serving side serves ``version`` (it said so: it read the weights handed over, or it sends the learner
        back to them); ``handed``: a version handed over that it never read (None: ``version`` is one handed over).
        Versions handed over up to that one are served no more, or never were."""
        with self._lock:
            self.served = version
            last = version if handed is None else handed
            if last in self._handed:  # said in the order handed over: the first is the one said
                del self._handed[:self._handed.index(last) + 1]

    def _forget_old_versions(self) -> None:
        """Keep at most ``keep_versions``: the oldest promoted versions beyond are forgotten and their files
        deleted, but a starting model (whose parent is None), the version trained from, the one the serving side
        last said it serves and those handed over since (it may serve them yet: ``is_served``). That the learner
        trains from a version did not make it the one served: a learner whose weights could not be read on the
        serving side deleted the file of the version served, and could not be sent back to it. Under the lock."""
        limit = self.config.keep_versions
        if limit is None or len(self.versions) <= limit:
            return
        kept = {self.version, self.served, *self._handed}
        old = [v for v in self.versions if v.parent is not None and v.version not in kept]
        gone = {v.version for v in old[:len(self.versions) - limit]}
        for v in self.versions:
            if v.version in gone and v.path is not None:
                try:
                    Path(v.path).unlink(missing_ok=True)
                except OSError as exc:  # listed no more all the same: the next start lists it again
                    log.warning("could not delete old version %s: %s", v.path, exc)
        self.versions = [v for v in self.versions if v.version not in gone]
        shown = [v.version for v in old if v.version in gone][:FORGOT_SHOWN]  # oldest first; all: kB a line
        log.info("forgot %d old versions (keeping at most %d): %s%s", len(gone), limit, ", ".join(shown),
                 f" and {len(gone) - len(shown)} more" if len(gone) > len(shown) else "")

    def rollback(self, version: str) -> HARNet:
        """Serve (and keep training from) an earlier version: the challenger starts from it, the comparison and
        the updates since a promotion start from nothing, and only sequences labelled from now on score (see the
        module's docstring). Before, a learner behind its labels promoted a new version 0.6 s after an
        operator's rollback, on 24 windows labelled before it, and updates counted before it."""
        with self._lock:
            info = next((v for v in self.versions if v.version == version), None)
            if info is None:
                raise ValueError(f"unknown model version {version!r}")
            if info.path is None:
                raise ValueError(f"version {version!r} was not saved to a file; it cannot be restored")
            model, _ = load_checkpoint(info.path)
            self.serving = copy.deepcopy(model).eval()
            self.challenger = copy.deepcopy(model).train()
            self._make_optimiser()
            self._scores.clear()
            self._since_promotion = 0
            self._rolled_back = time.monotonic()
            self.version = version
            self._hand_over(version)
        self.on_promote(copy.deepcopy(model), version)
        return model
