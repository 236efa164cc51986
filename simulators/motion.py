"""Kinematics of a simulated body and the specific force a sensor strapped to it reads.

The body is a chain pelvis → trunk → upper arm → forearm driven by the joint channels of
``CHANNELS``: the pelvis position and orientation in the world, the trunk relative to the pelvis,
the shoulder, elbow and forearm angles. World frame: x forward (the person's heading at yaw 0),
y to the left, z up. The simulated arm is the left one; a sensor on the right side reads the mirror
image of its motion (``sensor_axes``).

An exercise is a cycle of key poses (``Template``, some computed by inverse kinematics: hands that
stay on the floor in a push-up) with smooth moves between them: minimum-jerk for point-to-point
moves, half-cosine for continuous back-and-forth repetitions. The body comes to rest at every key
pose, so position and velocity stay continuous across repetitions, sets, transitions and rests.
Every repetition varies in duration and range, a working arm wobbles a little (``Tremor``),
ballistic phases (jumps, jumping jacks, running steps) add a spring-mass hop to the pelvis height
(``hop_height``), and gait adds bounce, sway and arm swing around a moving base (``Gait``).

A sensor reads specific force ``f = Rᵀ (p'' − g)`` with ``g = (0, 0, −9.81)`` and angular velocity
``ω = vee(Rᵀ Ṙ)`` in its own frame, where ``p(t)`` and ``R(t)`` are the position and orientation
(sensor to world) of the segment it is on; ``p''`` and ``Ṙ`` are central differences of the
trajectory sampled on a uniform grid (``specific_force``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.labels import SIMULATED

__all__ = [
    "G",
    "CHANNELS",
    "PLACEMENTS",
    "UNSEEN",
    "EXERCISES",
    "Person",
    "sample_person",
    "sensor_axes",
    "rotation",
    "Track",
    "Segment",
    "Place",
    "Template",
    "template",
    "hop_height",
    "standing_pose",
    "forward_kinematics",
    "specific_force",
    "segment_signals",
    "set_segments",
    "gait_segment",
    "rest_segments",
    "transition_segment",
    "stand_at",
]

G = 9.81  # m/s², gravity of the simulated world (the brief's g = (0, 0, -9.81))

CHANNELS = (
    "px", "py", "pz",  # pelvis centre, m, world frame
    "yaw", "pelvis_pitch", "pelvis_roll",  # pelvis orientation, rad (pitch > 0 leans forward)
    "trunk_flex", "trunk_twist",  # trunk relative to the pelvis, rad
    "shoulder_flex", "shoulder_abduction", "shoulder_rotation",  # upper arm relative to the trunk, rad
    "elbow_flex", "pronation",  # forearm relative to the upper arm, rad
)
(PX, PY, PZ, YAW, PELVIS_PITCH, PELVIS_ROLL, TRUNK_FLEX, TRUNK_TWIST,
 SH_FLEX, SH_ABD, SH_ROT, ELBOW, PRON) = range(13)
N_CHANNELS = len(CHANNELS)
_ANGLES = slice(YAW, N_CHANNELS)

PLACEMENTS = ("wrist", "upper_arm", "waist")

# Exercises outside the normal set, for the `unseen_exercise` drift scenario.
UNSEEN = ("kettlebell_swing", "mountain_climber")
EXERCISES = SIMULATED + UNSEEN

# Sensor axes of each placement's canonical (left-side) mounting, as columns in the frame of the
# segment it sits on, and the axis that flips when the sensor is worn on the right side.
# wrist: watch on the left wrist, x towards the hand, y to the ulnar side, z out of the face.
# upper_arm: phone in an armband on the outside of the arm, y towards the shoulder, z out of the screen.
# waist: phone clipped to the belt, left of the navel, y up, z out of the screen (forward).
_SEGMENT_TO_SENSOR = {
    "wrist": (np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]), 1),
    "upper_arm": (np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), 0),
    "waist": (np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), 0),
}
# The axis along the limb in the canonical sensor frame, for strap rotations.
LIMB_AXIS = {"wrist": 0, "upper_arm": 1, "waist": 1}


def _deg(x: float) -> float:
    return x * math.pi / 180.0


def rotation(axis: int, angle: float) -> np.ndarray:
    """The 3×3 rotation by ``angle`` (rad) about coordinate axis ``axis`` (0 x, 1 y, 2 z).

    Examples
    --------
    >>> np.round(rotation(2, np.pi / 2) @ [1.0, 0.0, 0.0], 6)
    array([0., 1., 0.])
    """
    c, s = math.cos(angle), math.sin(angle)
    if axis == 0:
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == 1:
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------
# People


@dataclass
class Person:
    """Body, habits and sensor of one simulated person.

    Lengths in metres, angles in radians, accelerations in m/s², times in seconds.
    """

    height: float
    pelvis_height: float  # hip joint centre above the floor, standing
    trunk: float  # pelvis centre to the shoulder joints
    shoulder_half_width: float  # shoulder joint to the body's midline
    upper_arm: float  # shoulder to elbow
    forearm: float  # elbow to wrist
    tempo: float  # multiplies the duration of every repetition (> 1: slower)
    range_of_motion: float  # multiplies the amplitude of every repetition
    side: str  # "left" or "right": the side of the body the sensor is on
    mount: np.ndarray  # (3, 3) sensor axes in the placement's canonical frame: strap and facing
    acc_noise: float  # white noise per axis, rms
    acc_bias: np.ndarray  # (3,)
    acc_scale: np.ndarray  # (3,) gain error per axis
    acc_lsb: float  # quantisation step
    acc_range: float  # full scale, readings saturate beyond ±acc_range
    gyro_noise: float  # rad/s rms
    gyro_bias: np.ndarray  # (3,) rad/s
    gyro_lsb: float  # rad/s
    jitter: float  # timestamp jitter, s rms
    drop_rate: float  # share of samples lost independently
    rest_scale: float  # multiplies rest durations
    tremor: float  # rad/s², angular acceleration of the wobble of working joints
    step_rate: dict[str, float]  # steps per second, "walking" and "running"
    styles: dict[str, int] = field(default_factory=dict)  # variant of each exercise this person does
    exercise_tempo: dict[str, float] = field(default_factory=dict)  # per-exercise tempo on top of `tempo`
    _templates: dict = field(default_factory=dict, repr=False, compare=False)


# variants of an exercise and how common each is; see the exercise templates for what they are
_STYLES = {
    "squat": (0.45, 0.35, 0.2),  # arms forward, barbell on the back, goblet
    "sit_up": (0.25, 0.2, 0.4, 0.15),  # arms crossed, hands behind the head, arms swinging, crunch
    "biceps_curl": (0.7, 0.3),  # palms up, hammer
    "lunge": (0.6, 0.4),  # dumbbells at the sides, hands on the hips
    "burpee": (0.35, 0.4, 0.25),  # with a push-up, without, clapping overhead
    "push_up": (0.7, 0.3),  # full, short and quick
    "row": (0.5, 0.5),  # torso 57° or 67° forward
}

# Accelerometer resolutions: (least significant bit, full scale) in m/s².
_ACC_FORMATS = (
    (16 * 9.80665 / 4096, 8 * 9.80665),  # 12 bits over ±8 g, a cheap wristband
    (32 * 9.80665 / 65536, 16 * 9.80665),  # 16 bits over ±16 g, a watch IMU
    (0.0012, 8 * 9.80665),  # a phone
)


def _small_rotation(rng: np.random.Generator, axis: int, sd_axis: float, sd_other: float) -> np.ndarray:
    angles = rng.normal(0.0, sd_other, 3)
    angles[axis] = float(np.clip(rng.normal(0.0, sd_axis), -_deg(20), _deg(20)))
    return rotation(0, angles[0]) @ rotation(1, angles[1]) @ rotation(2, angles[2])


def sample_person(rng: np.random.Generator, placement: str = "wrist") -> Person:
    """Draw a person: body, tempo, range of motion, handedness, strap and sensor.

    Examples
    --------
    >>> p = sample_person(np.random.default_rng(0))
    >>> 1.5 <= p.height <= 2.0 and p.side in ("left", "right")
    True
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"Invalid 'placement' {placement!r}. Valid values are: {', '.join(PLACEMENTS)}")
    height = float(np.clip(rng.normal(1.74, 0.09), 1.5, 2.0))

    def part(share: float) -> float:
        return share * height * float(np.exp(rng.normal(0.0, 0.03)))

    right_share = {"wrist": 0.15, "upper_arm": 0.6, "waist": 0.5}[placement]
    side = "right" if rng.random() < right_share else "left"
    limb = LIMB_AXIS[placement]
    if placement == "wrist":
        # on the right wrist a watch is normally worn with its crown towards the elbow
        crown_to_elbow = (side == "right") != (rng.random() < 0.15)
        base = rotation(2, math.pi) if crown_to_elbow else np.eye(3)
        if rng.random() < 0.08:  # face on the inside of the wrist
            base = base @ rotation(0, math.pi)
        mount = base @ _small_rotation(rng, limb, _deg(8), _deg(3))
    elif placement == "upper_arm":
        base = rotation(2, math.pi) if rng.random() < 0.5 else np.eye(3)  # top of the phone down
        if rng.random() < 0.1:  # screen towards the arm
            base = base @ rotation(1, math.pi)
        mount = base @ _small_rotation(rng, limb, _deg(12), _deg(4))
    else:
        base = rotation(2, float(rng.choice([0.0, math.pi / 2, -math.pi / 2])))  # portrait or landscape
        if rng.random() < 0.3:  # screen towards the body
            base = base @ rotation(1, math.pi)
        mount = base @ _small_rotation(rng, limb, _deg(10), _deg(5))
    lsb, full_scale = _ACC_FORMATS[int(rng.integers(len(_ACC_FORMATS)))]
    walk = float(np.clip(rng.normal(1.9, 0.08), 1.72, 2.08))
    run = float(np.clip(rng.normal(2.75, 0.1), 2.5, 3.0))
    return Person(
        height=height,
        pelvis_height=part(0.53),
        trunk=part(0.29),
        shoulder_half_width=part(0.105),
        upper_arm=part(0.186),
        forearm=part(0.146),
        tempo=float(np.exp(rng.normal(0.0, 0.12))),
        range_of_motion=float(np.clip(rng.normal(1.0, 0.07), 0.82, 1.15)),
        side=side,
        mount=mount,
        acc_noise=float(rng.uniform(0.01, 0.05)),
        acc_bias=rng.normal(0.0, 0.08, 3),
        acc_scale=1.0 + rng.normal(0.0, 0.01, 3),
        acc_lsb=lsb,
        acc_range=full_scale,
        gyro_noise=float(rng.uniform(0.003, 0.015)),
        gyro_bias=rng.normal(0.0, 0.01, 3),
        gyro_lsb=_deg(4000 / 65536),  # 16 bits over ±2000 °/s
        jitter=float(rng.uniform(0.0003, 0.003)),
        drop_rate=0.0 if rng.random() < 0.3 else float(rng.uniform(0.0, 0.02)),
        rest_scale=float(np.exp(rng.normal(0.0, 0.25))),
        tremor=float(rng.uniform(2.0, 5.0)),
        step_rate={"walking": walk, "running": run},
        styles={name: int(rng.choice(len(p), p=p)) for name, p in _STYLES.items()},
        exercise_tempo={name: float(np.exp(rng.normal(0.0, 0.08))) for name in EXERCISES},
    )


def sensor_axes(placement: str, side: str, mount: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matrices taking specific force and angular velocity from the segment frame to the sensor's.

    The body model moves the left arm (and the left of the pelvis); a sensor on the right reads the
    mirror image of that motion: the axis across the mirror plane flips for the specific force, the
    other two for the angular velocity (a pseudovector).

    Returns
    -------
    acc, gyro : (3, 3) arrays; ``f_sensor = acc @ f_segment``.
    """
    to_sensor, flip = _SEGMENT_TO_SENSOR[placement]
    mirror = np.ones(3)
    if side == "right":
        mirror[flip] = -1.0
    acc = mount.T @ (mirror[:, None] * to_sensor.T)
    gyro = acc if side == "left" else mount.T @ (-mirror[:, None] * to_sensor.T)
    return acc, gyro


# ---------------------------------------------------------------------------------------------
# Forward kinematics (vectorised over samples; quaternions are (w, x, y, z) tuples of arrays)


def _turn(q, c, s, axis: int):
    """q ⊗ (rotation about the local coordinate ``axis`` by the angle whose half has cos c, sin s)."""
    w, x, y, z = q
    if axis == 0:
        return w * c - x * s, x * c + w * s, y * c + z * s, z * c - y * s
    if axis == 1:
        return w * c - y * s, x * c - z * s, y * c + w * s, z * c + x * s
    return w * c - z * s, x * c + y * s, y * c - x * s, z * c + w * s


def _col_x(q):
    w, x, y, z = q
    return 1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y + w * z), 2.0 * (x * z - w * y)


def _col_y(q):
    w, x, y, z = q
    return 2.0 * (x * y - w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z + w * x)


def _col_z(q):
    w, x, y, z = q
    return 2.0 * (x * z + w * y), 2.0 * (y * z - w * x), 1.0 - 2.0 * (x * x + y * y)


def _add(p, v, k: float):
    return p[0] + k * v[0], p[1] + k * v[1], p[2] + k * v[2]


def forward_kinematics(ch: np.ndarray, person: Person, upto: str = "forearm") -> dict[str, tuple]:
    """Positions and orientations of the body segments for channel values ``ch`` (n, 13).

    Returns a dict of tuples of (n,) arrays: positions ``pelvis``, ``shoulder``, ``elbow``, ``wrist``
    (x, y, z) and segment orientations ``q_pelvis``, ``q_trunk``, ``q_upper_arm``, ``q_forearm``
    (unit quaternions w, x, y, z; segment to world), as far down the chain as ``upto``
    ("pelvis", "trunk", "upper_arm" or "forearm"). In a segment's frame the limb points along −z.

    Examples
    --------
    >>> person = sample_person(np.random.default_rng(0))
    >>> fk = forward_kinematics(standing_pose(person)[None, :], person)
    >>> bool(fk["shoulder"][2][0] > fk["elbow"][2][0] > fk["wrist"][2][0])  # arm hanging
    True
    """
    return _chain(np.ascontiguousarray(np.asarray(ch, dtype=float).T), person, upto)


_LAST_JOINT = {"pelvis": PELVIS_ROLL, "trunk": TRUNK_TWIST, "upper_arm": SH_ROT, "forearm": PRON}
# the chain turns by minus these channels' angles
_NEGATED = np.zeros(N_CHANNELS, dtype=bool)
_NEGATED[[SH_FLEX, ELBOW, PRON]] = True


def _chain(ch: np.ndarray, person: Person, upto: str) -> dict[str, tuple]:
    """``forward_kinematics`` on channels as rows (13, n)."""
    last = _LAST_JOINT[upto] + 1
    half = 0.5 * ch[YAW:last]
    c = np.cos(half)
    s = np.sin(half)
    s[_NEGATED[YAW:last]] *= -1.0
    j = lambda k: k - YAW  # noqa: E731  row of channel k
    zero = np.zeros(ch.shape[1])
    out: dict[str, tuple] = {}
    q = (c[j(YAW)], zero, zero, s[j(YAW)])
    q = _turn(q, c[j(PELVIS_PITCH)], s[j(PELVIS_PITCH)], 1)
    q = _turn(q, c[j(PELVIS_ROLL)], s[j(PELVIS_ROLL)], 0)
    out["pelvis"] = (ch[PX], ch[PY], ch[PZ])
    out["q_pelvis"] = q
    if upto == "pelvis":
        return out
    q = _turn(q, c[j(TRUNK_FLEX)], s[j(TRUNK_FLEX)], 1)
    q = _turn(q, c[j(TRUNK_TWIST)], s[j(TRUNK_TWIST)], 2)
    out["q_trunk"] = q
    shoulder = _add(out["pelvis"], _col_y(q), person.shoulder_half_width)
    shoulder = _add(shoulder, _col_z(q), person.trunk)
    out["shoulder"] = shoulder
    if upto == "trunk":
        return out
    q = _turn(q, c[j(SH_ABD)], s[j(SH_ABD)], 0)
    q = _turn(q, c[j(SH_FLEX)], s[j(SH_FLEX)], 1)
    q = _turn(q, c[j(SH_ROT)], s[j(SH_ROT)], 2)
    out["q_upper_arm"] = q
    out["elbow"] = _add(shoulder, _col_z(q), -person.upper_arm)
    if upto == "upper_arm":
        return out
    q = _turn(q, c[j(ELBOW)], s[j(ELBOW)], 1)
    q = _turn(q, c[j(PRON)], s[j(PRON)], 2)
    out["q_forearm"] = q
    out["wrist"] = _add(out["elbow"], _col_z(q), -person.forearm)
    return out


def _sensor_pose(ch: np.ndarray, person: Person, placement: str):
    """Position (tuple of 3 arrays) and orientation (quaternion) of the segment carrying the sensor.

    ``ch`` holds the channels as rows (13, n).
    """
    if placement == "waist":
        fk = _chain(ch, person, "pelvis")
        q = fk["q_pelvis"]
        pos = _add(_add(fk["pelvis"], _col_x(q), 0.11), _col_y(q), 0.09)  # front left of the belt
        return pos, q
    if placement == "upper_arm":
        fk = _chain(ch, person, "upper_arm")
        q = fk["q_upper_arm"]
        pos = _add(_add(fk["shoulder"], _col_z(q), -0.45 * person.upper_arm), _col_y(q), 0.05)
        return pos, q
    fk = _chain(ch, person, "forearm")
    q = fk["q_forearm"]
    # the watch sits a little up the forearm from the wrist joint, on its back
    pos = _add(_add(fk["wrist"], _col_z(q), 0.04), _col_y(q), 0.025)
    return pos, q


def _specific_force(pos, q, dt: float):
    """Central differences: specific force and angular velocity in the segment frame at the inner samples."""
    inv_dt2 = 1.0 / (dt * dt)
    ax = (pos[0][2:] - 2.0 * pos[0][1:-1] + pos[0][:-2]) * inv_dt2
    ay = (pos[1][2:] - 2.0 * pos[1][1:-1] + pos[1][:-2]) * inv_dt2
    az = (pos[2][2:] - 2.0 * pos[2][1:-1] + pos[2][:-2]) * inv_dt2 + G
    qc = tuple(c[1:-1] for c in q)
    cx, cy, cz = _col_x(qc), _col_y(qc), _col_z(qc)
    f = np.empty((len(ax), 3))
    f[:, 0] = cx[0] * ax + cx[1] * ay + cx[2] * az
    f[:, 1] = cy[0] * ax + cy[1] * ay + cy[2] * az
    f[:, 2] = cz[0] * ax + cz[1] * ay + cz[2] * az
    # ω = 2 vec(q* ⊗ q̇)
    k = 1.0 / dt  # 2 / (2 dt)
    dw, dx, dy, dz = ((c[2:] - c[:-2]) * k for c in q)
    w, x, y, z = qc
    gyro = np.empty_like(f)
    gyro[:, 0] = w * dx - dw * x - (y * dz - z * dy)
    gyro[:, 1] = w * dy - dw * y - (z * dx - x * dz)
    gyro[:, 2] = w * dz - dw * z - (x * dy - y * dx)
    return f, gyro


def specific_force(pos: np.ndarray, quat: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Specific force and angular velocity, in the body's own frame, of a sampled trajectory.

    Parameters
    ----------
    pos : (n + 2, 3) positions in metres, world frame (z up), on a uniform grid of step ``dt``.
    quat : (n + 2, 4) orientations (w, x, y, z), body to world, continuous in sign.
    dt : grid step, s.

    Returns
    -------
    f : (n, 3) ``Rᵀ (p'' − g)`` in m/s² at the n inner samples.
    gyro : (n, 3) angular velocity in rad/s.

    Examples
    --------
    A body lying still, z up, reads +9.81 on z:

    >>> f, gyro = specific_force(np.zeros((5, 3)), np.tile([1.0, 0, 0, 0], (5, 1)), 0.02)
    >>> f[0].round(3).tolist(), gyro[0].round(3).tolist()
    ([0.0, 0.0, 9.81], [0.0, 0.0, 0.0])
    """
    pos = np.asarray(pos, dtype=float)
    quat = np.asarray(quat, dtype=float)
    return _specific_force(tuple(pos.T), tuple(quat.T), dt)


def segment_signals(ch: np.ndarray, person: Person, placement: str,
                    dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Specific force and angular velocity (segment frame, left side) at the inner rows of ``ch``.

    ``ch`` (n + 2, 13) holds the channels on a uniform time grid of step ``dt`` with one extra row
    at each end; returns two (n, 3) arrays.
    """
    pos, q = _sensor_pose(np.ascontiguousarray(ch.T), person, placement)
    return _specific_force(pos, q, dt)


# ---------------------------------------------------------------------------------------------
# Trajectories: key-pose tracks and additive terms


def _ease(u: np.ndarray) -> np.ndarray:
    """Minimum-jerk profile 0 → 1 with zero velocity and acceleration at both ends."""
    return u * u * u * (10.0 + u * (-15.0 + 6.0 * u))


def _ease_cosine(u: np.ndarray) -> np.ndarray:
    """Half-cosine profile 0 → 1: back-and-forth moves chain into a sinusoid (swings, jumping jacks)."""
    return 0.5 - 0.5 * np.cos(math.pi * u)


class Track:
    """Key poses at knot times with smooth moves between consecutive ones, at rest at every knot.

    ``easing`` is "min_jerk" (point-to-point moves: transitions, many-stage exercises such as the
    burpee) or "cosine" (continuous back-and-forth repetitions: lifts, swings, jumping jacks).

    Examples
    --------
    >>> track = Track([0.0, 1.0], np.array([[0.0], [2.0]]))
    >>> track(np.array([-1.0, 0.5, 3.0])).ravel().tolist()
    [0.0, 1.0, 2.0]
    """

    def __init__(self, knots: Sequence[float], poses: np.ndarray, easing: str = "min_jerk") -> None:
        self.knots = np.asarray(knots, dtype=float)
        self.poses = np.asarray(poses, dtype=float)
        if len(self.knots) != len(self.poses) or len(self.knots) < 2:
            raise ValueError("a track needs at least two knots, one pose per knot")
        self._ease = _ease_cosine if easing == "cosine" else _ease
        self._duration = np.maximum(np.diff(self.knots), 1e-9)
        self._delta = np.diff(self.poses, axis=0)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.knots, t, side="right") - 1
        np.clip(i, 0, len(self._duration) - 1, out=i)
        u = (t - self.knots[i]) / self._duration[i]
        np.clip(u, 0.0, 1.0, out=u)
        return self.poses[i] + self._delta[i] * self._ease(u)[:, None]


def hop_height(s: np.ndarray, period: np.ndarray | float, contact: np.ndarray | float) -> np.ndarray:
    """Height of a spring-mass hop above its lowest point, from mid-stance to mid-stance.

    During ground contact the vertical force rises and falls as a half sine; in flight the body
    falls freely. Velocity is zero at ``s = 0`` and ``s = period``, the lowest points.

    Parameters
    ----------
    s : time since mid-stance, s, within [0, period].
    period : time from one mid-stance to the next, s.
    contact : ground contact time per hop, s (< period).

    Examples
    --------
    >>> h = hop_height(np.array([0.0, 0.2, 0.4]), 0.4, 0.24)
    >>> float(h[0]), float(h[2]), bool(h[1] > 0.05)
    (0.0, 0.0, True)
    """
    s = np.minimum(s, period - s)  # symmetric about mid-flight
    peak = math.pi * G * period / (2.0 * contact)  # vertical force per kg at mid-stance
    k = peak * contact * contact / (math.pi * math.pi)
    half = 0.5 * contact
    stance = k * (1.0 - np.cos(math.pi * s / contact)) - 0.5 * G * s * s
    tau = s - half
    takeoff = k - 0.5 * G * half * half
    v0 = 0.5 * G * (period - contact)
    flight = takeoff + v0 * tau - 0.5 * G * tau * tau
    return np.where(s <= half, stance, flight)


class Hops:
    """Adds spring-mass hops to the pelvis height over given intervals (one hop per interval)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, contact_share: float) -> None:
        self.starts = np.asarray(starts, dtype=float)
        self.ends = np.asarray(ends, dtype=float)
        self.contact_share = contact_share

    def __call__(self, t: np.ndarray, out: np.ndarray) -> None:
        i = np.searchsorted(self.starts, t, side="right") - 1
        inside = (i >= 0) & (t < self.ends[np.maximum(i, 0)])
        if not inside.any():
            return
        i = i[inside]
        period = self.ends[i] - self.starts[i]
        out[inside, PZ] += hop_height(t[inside] - self.starts[i], period, self.contact_share * period)


def _envelope(t: np.ndarray, start: float, end: float, ramp: float) -> np.ndarray:
    """1 inside [start + ramp, end − ramp], minimum-jerk ramps to 0 at start and end."""
    u_in = np.clip((t - start) / ramp, 0.0, 1.0)
    u_out = np.clip((end - t) / ramp, 0.0, 1.0)
    return _ease(np.minimum(u_in, u_out))


class Tremor:
    """The unsteadiness of working muscles: a wobble of some joints, sinusoids at 0.8–2.5 Hz with
    random phases and about the same angular acceleration at every frequency, faded in and out
    with the set."""

    _CHANNELS = np.array([TRUNK_FLEX, SH_FLEX, SH_ABD, ELBOW, PRON])

    def __init__(self, rng: np.random.Generator, start: float, end: float, acceleration: float) -> None:
        shape = (len(self._CHANNELS), 2)
        freq = 2 * math.pi * rng.uniform(0.8, 2.5, shape)
        self.freq = freq.astype(np.float32)
        self.phase = rng.uniform(0.0, 2 * math.pi, shape).astype(np.float32)
        self.amp = (acceleration * rng.uniform(0.4, 1.0, shape) / freq**2).astype(np.float32)
        self.amp[0] *= 0.3  # the trunk wobbles less than the arm
        self.start, self.end = start, end

    def __call__(self, t: np.ndarray, out: np.ndarray) -> None:
        env = _envelope(t, self.start, self.end, 0.5)
        # single precision is plenty for a wobble of a degree or so, and twice as fast
        u = (t - self.start).astype(np.float32)[:, None, None]
        wave = (np.sin(u * self.freq + self.phase) * self.amp).sum(axis=2)
        out[:, self._CHANNELS] += wave * env[:, None]


@dataclass
class Segment:
    """A stretch of the timeline with one label: a key-pose track plus additive terms.

    Every segment starts and ends with the body at rest, so consecutive ones join smoothly.
    """

    start: float
    end: float
    label: str
    track: Track
    terms: list[Callable[[np.ndarray, np.ndarray], None]] = field(default_factory=list)

    def channels(self, t: np.ndarray) -> np.ndarray:
        """Channel values (n, 13) at times ``t``."""
        out = self.track(t)
        for term in self.terms:
            term(t, out)
        return out

    def end_pose(self) -> np.ndarray:
        return self.channels(np.array([self.end]))[0]


# ---------------------------------------------------------------------------------------------
# Poses


def standing_pose(person: Person) -> np.ndarray:
    """Standing relaxed at the origin facing +x, arms hanging, palms towards the thighs."""
    pose = np.zeros(N_CHANNELS)
    pose[PZ] = person.pelvis_height
    pose[SH_FLEX] = _deg(3)
    pose[SH_ABD] = _deg(8)
    pose[ELBOW] = _deg(12)
    pose[PRON] = _deg(10)
    return pose


def _pose(base: np.ndarray, **values: float) -> np.ndarray:
    """A copy of ``base`` with channels set by name (angles in degrees, lengths in metres)."""
    pose = base.copy()
    for name, value in values.items():
        i = CHANNELS.index(name)
        pose[i] = _deg(value) if i >= YAW else value
    return pose


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _quat_matrix(q) -> np.ndarray:
    return np.array([np.ravel(c) for c in (*_col_x(q), *_col_y(q), *_col_z(q))]).reshape(3, 3).T


def _arm(pose: np.ndarray, person: Person, upper, fore, dorsal=None, frame: str = "world",
         rot: float | None = None) -> np.ndarray:
    """Set the arm channels of ``pose`` so the arm points as given.

    ``upper`` and ``fore`` are directions of the upper arm (shoulder → elbow) and forearm
    (elbow → wrist), ``dorsal`` the direction the back of the wrist faces (the watch face), in the
    world or trunk frame. An arm direction has two sets of shoulder angles (raised forwards past
    the horizontal, or sideways); the one nearer the arm channels already in ``pose`` wins, so
    moves between key poses take the natural path. With a straight elbow the humeral rotation is
    ``rot`` (default: as in ``pose``).
    """
    trunk = _quat_matrix(forward_kinematics(pose[None, :], person, "trunk")["q_trunk"])
    to_trunk = trunk.T if frame == "world" else np.eye(3)
    d_u = to_trunk @ _unit(upper)
    d_f = to_trunk @ _unit(fore)
    x = math.asin(float(np.clip(d_u[0], -1.0, 1.0)))
    best, best_cost = pose, math.inf
    for flex, abd in ((x, math.atan2(d_u[1], -d_u[2])), (math.pi - x, math.atan2(-d_u[1], d_u[2]))):
        m = rotation(0, abd) @ rotation(1, -flex)
        v = m.T @ d_f
        elbow = math.acos(float(np.clip(-v[2], -1.0, 1.0)))
        twist = pose[SH_ROT] if rot is None else rot
        if math.sin(elbow) > 0.08:
            twist = math.atan2(v[1], v[0])
        candidate = pose.copy()
        candidate[SH_FLEX], candidate[SH_ABD], candidate[SH_ROT], candidate[ELBOW] = flex, abd, twist, elbow
        if dorsal is not None:
            b = m @ rotation(2, twist) @ rotation(1, -elbow)
            w = b.T @ (to_trunk @ _unit(dorsal))
            candidate[PRON] = math.atan2(w[0], w[1])
        d = candidate[SH_FLEX:] - pose[SH_FLEX:]
        cost = float(np.abs(d - 2 * math.pi * np.round(d / (2 * math.pi))).sum())
        if cost < best_cost:
            best, best_cost = candidate, cost
    return best


def _face(pose: np.ndarray, person: Person, dorsal, frame: str = "world") -> np.ndarray:
    """Set the pronation of ``pose`` so the back of the wrist faces ``dorsal`` (arm otherwise as is)."""
    pose = pose.copy()
    trunk = _quat_matrix(forward_kinematics(pose[None, :], person, "trunk")["q_trunk"])
    to_trunk = trunk.T if frame == "world" else np.eye(3)
    b = (rotation(0, pose[SH_ABD]) @ rotation(1, -pose[SH_FLEX]) @ rotation(2, pose[SH_ROT])
         @ rotation(1, -pose[ELBOW]))
    w = b.T @ (to_trunk @ _unit(dorsal))
    pose[PRON] = math.atan2(w[0], w[1])
    return pose


def _reach(pose: np.ndarray, person: Person, wrist, pole, dorsal) -> np.ndarray:
    """Set the arm channels so the wrist is at the world point ``wrist``, the elbow towards ``pole``."""
    shoulder = np.array([c[0] for c in forward_kinematics(pose[None, :], person, "trunk")["shoulder"]])
    lu, lf = person.upper_arm, person.forearm
    span = np.asarray(wrist, dtype=float) - shoulder
    d = float(np.clip(np.linalg.norm(span), 0.2 * (lu + lf), 0.995 * (lu + lf)))
    e1 = _unit(span)
    p = np.asarray(pole, dtype=float) - np.dot(pole, e1) * e1
    p = _unit(p)
    cos_a = (lu * lu + d * d - lf * lf) / (2 * lu * d)
    d_u = cos_a * e1 + math.sqrt(max(0.0, 1.0 - cos_a * cos_a)) * p
    elbow = shoulder + lu * d_u
    return _arm(pose, person, d_u, shoulder + d * e1 - elbow, dorsal)


def _plank(person: Person, hands_x: float, shoulder_height: float, toes_x: float | None = None) -> np.ndarray:
    """Pelvis and trunk of a straight body on toes and hands; shoulders over the hands unless ``toes_x``."""
    body = person.pelvis_height - 0.05 + person.trunk  # toes to shoulders
    rise = shoulder_height - 0.06
    incline = math.asin(float(np.clip(rise / body, 0.0, 0.95)))
    if toes_x is None:
        toes_x = hands_x - body * math.cos(incline)
    leg = person.pelvis_height - 0.05
    pose = np.zeros(N_CHANNELS)
    pose[PX] = toes_x + leg * math.cos(incline)
    pose[PZ] = 0.06 + leg * math.sin(incline)
    pose[PELVIS_PITCH] = math.pi / 2 - incline
    return pose


# ---------------------------------------------------------------------------------------------
# Exercise templates


@dataclass
class Template:
    """One repetition of an exercise as a cycle of key poses, in the set's frame."""

    poses: np.ndarray  # (K + 1, 13) key poses; the first and last are the same
    fractions: np.ndarray  # (K,) share of the repetition's duration of each move
    duration: float  # s per repetition at tempo 1
    posture: str = "stand"  # "stand", "prone", "supine", "bench" or "sit": how to get there
    anchor: int = 0  # the key pose that range-of-motion scaling keeps fixed
    hops: tuple[tuple[int, int, float], ...] = ()  # (move, hops during it, ground contact share)
    alternate: bool = False  # mirror every other repetition (the other leg steps)
    easing: str = "min_jerk"  # "cosine" for continuous swings

    def __post_init__(self) -> None:
        poses = [np.asarray(p, dtype=float) for p in self.poses]
        for k in range(1, len(poses)):
            poses[k] = _unwrap_to(poses[k], poses[k - 1])
        self.poses = np.array(poses)
        self.fractions = np.asarray(self.fractions, dtype=float) / np.sum(self.fractions)


def _hanging(person: Person, base: np.ndarray, dorsal=(0.15, 1.0, 0.0)) -> np.ndarray:
    return _arm(base, person, (0.03, 0.12, -1.0), (0.12, 0.06, -1.0), dorsal)


def _squat(person: Person) -> Template:
    s = standing_pose(person)
    style = person.styles.get("squat", 0)
    top = s.copy()
    if style == 1:  # barbell on the upper back: slower, more upright, hands holding the bar
        bottom = _pose(s, pz=s[PZ] - 0.42 * person.pelvis_height, px=-0.1, pelvis_pitch=26, trunk_flex=6)
        top = _arm(top, person, (-0.3, 0.85, -0.45), (-0.2, -0.15, 1.0), (-1.0, 0.0, 0.0), frame="trunk")
        fk = forward_kinematics(np.array([top, bottom]), person)
        bar = np.array(fk["wrist"])[:, 0] - np.array(fk["shoulder"])[:, 0]  # rides on the back
        trunk_top, trunk_bottom = (_quat_matrix(tuple(c[i:i + 1] for c in fk["q_trunk"])) for i in (0, 1))
        wrist = np.array(fk["shoulder"])[:, 1] + trunk_bottom @ trunk_top.T @ bar
        bottom = _reach(bottom, person, wrist, (-0.3, 0.7, -1.0), (-1.0, 0.0, 0.0))
        return Template([top, bottom, bottom, top, top], [0.42, 0.04, 0.4, 0.14], 3.0, easing="cosine")
    bottom = _pose(s, pz=s[PZ] - 0.43 * person.pelvis_height, px=-0.14, pelvis_pitch=38, trunk_flex=8)
    if style == 0:  # arms forward for balance at the bottom
        top = _hanging(person, top)
        bottom = _arm(bottom, person, (1.0, 0.08, -0.12), (1.0, 0.0, -0.05), (0.0, 0.2, 1.0))
    else:  # hands together in front of the chest (goblet)
        kw = dict(upper=(0.35, 0.15, -1.0), fore=(0.35, -0.55, 1.0), dorsal=(0.3, 1.0, 0.0), frame="trunk")
        top, bottom = _arm(top, person, **kw), _arm(bottom, person, **kw)
    return Template([top, bottom, bottom, top, top], [0.42, 0.04, 0.38, 0.16], 2.5, easing="cosine")


def _push_up_poses(person: Person) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plank (arms straight), bottom of a push-up, and the hands' position, hands at x = 0."""
    arm = person.upper_arm + person.forearm
    hands = np.array([0.0, person.shoulder_half_width + 0.06, 0.05])
    top = _plank(person, 0.0, 0.05 + 0.97 * arm)
    toes_x = top[PX] - (person.pelvis_height - 0.05) * math.cos(math.pi / 2 - top[PELVIS_PITCH])
    bottom = _plank(person, 0.0, 0.2 + 0.08 * (person.height - 1.74), toes_x=toes_x)
    pole, dorsal = (-1.0, 0.7, 0.6), (1.0, 0.0, 0.3)
    return _reach(top, person, hands, pole, dorsal), _reach(bottom, person, hands, pole, dorsal), hands


def _push_up(person: Person) -> Template:
    top, bottom, _ = _push_up_poses(person)
    if person.styles.get("push_up", 0) == 1:  # shallower, faster
        return Template([top, bottom, top, top], [0.45, 0.4, 0.15], 1.6, posture="prone")
    return Template([top, bottom, bottom, top, top], [0.42, 0.04, 0.38, 0.16], 2.0, posture="prone",
                    easing="cosine")


def _sit_up(person: Person) -> Template:
    lying = np.zeros(N_CHANNELS)
    lying[PZ], lying[PELVIS_PITCH] = 0.11, -math.pi / 2
    style = person.styles.get("sit_up", 0)
    if style == 3:  # crunch, reaching towards the knees
        up = _pose(lying, pelvis_pitch=-84, trunk_flex=38)
        lying_a = _arm(lying, person, (0.6, 0.15, -0.8), (0.75, 0.1, -0.65), (0.0, 1.0, 0.0), frame="trunk")
        up_a = _arm(up, person, (1.0, 0.12, -0.1), (1.0, 0.05, 0.0), (0.0, 1.0, 0.0), frame="trunk")
        return Template([lying_a, up_a, up_a, lying_a, lying_a], [0.4, 0.08, 0.4, 0.12], 2.2,
                        posture="supine")
    up = _pose(lying, pelvis_pitch=-68, trunk_flex=62, pz=0.12)
    if style == 0:  # arms crossed on the chest
        kw = dict(upper=(0.45, 0.1, -0.9), fore=(0.3, -0.9, 0.35), dorsal=(1.0, 0.0, 0.2), frame="trunk")
        lying_a, up_a = _arm(lying, person, **kw), _arm(up, person, **kw)
    elif style == 1:  # hands behind the head
        kw = dict(upper=(0.1, 0.9, 0.45), fore=(-0.3, -0.6, 0.75), dorsal=(-0.8, 0.4, 0.4), frame="trunk")
        lying_a, up_a = _arm(lying, person, **kw), _arm(up, person, **kw)
    else:  # arms from the floor behind the head to the toes
        up = _pose(lying, pelvis_pitch=-62, trunk_flex=78, pz=0.12)
        lying_a = _arm(lying, person, (-1.0, 0.2, 0.08), (-1.0, 0.1, 0.1), (0.0, 0.0, -1.0))
        up_a = _arm(up, person, (1.0, 0.1, -0.35), (1.0, 0.05, -0.3), (0.0, 0.0, 1.0))
    return Template([lying_a, up_a, up_a, lying_a, lying_a], [0.4, 0.08, 0.4, 0.12], 3.8, posture="supine")


def _jumping_jack(person: Person) -> Template:
    s = standing_pose(person)
    closed = _arm(s, person, (0.05, 0.25, -1.0), (0.15, 0.2, -1.0), (0.0, 1.0, 0.0))
    opened = _pose(s, pz=s[PZ] - 0.04)
    opened = _arm(opened, person, (0.1, 0.75, 0.65), (0.1, 0.1, 1.0), (0.3, -1.0, 0.0))
    return Template([closed, opened, closed], [0.5, 0.5], 0.85, hops=((0, 1, 0.6), (1, 1, 0.6)),
                    easing="cosine")


def _biceps_curl(person: Person) -> Template:
    s = standing_pose(person)
    hammer = person.styles.get("biceps_curl", 0) == 1
    # the back of the wrist faces out (hammer), or back and then forward-down at the top (palms up)
    dorsal_down, dorsal_up = ((0.0, 1.0, 0.0),) * 2 if hammer else ((-1.0, 0.0, 0.0), (0.64, 0.0, -0.77))
    down = _arm(s, person, (0.02, 0.1, -1.0), (0.08, 0.08, -1.0), dorsal_down)
    up = _arm(s, person, (0.2, 0.1, -1.0), (0.77, 0.05, 0.64), dorsal_up)
    return Template([down, up, up, down, down], [0.38, 0.05, 0.45, 0.12], 2.6, easing="cosine")


def _overhead_press(person: Person) -> Template:
    # upper arm and forearm move in one plane, the elbow opening as the shoulder lifts, so the
    # forearm stays close to vertical all the way up
    s = standing_pose(person)
    palms_forward = (-1.0, 0.0, 0.0)
    rack = _pose(s, shoulder_flex=8, shoulder_abduction=40, shoulder_rotation=90, elbow_flex=140)
    top = _pose(s, shoulder_flex=8, shoulder_abduction=170, shoulder_rotation=90, elbow_flex=10)
    rack, top = _face(rack, person, palms_forward), _face(top, person, palms_forward)
    top[PRON] = rack[PRON] + (top[PRON] - rack[PRON] + math.pi) % (2 * math.pi) - math.pi
    return Template([rack, top, top, rack, rack], [0.4, 0.08, 0.42, 0.1], 2.7, easing="cosine")


def _lunge(person: Person) -> Template:
    s = standing_pose(person)
    bottom = _pose(s, px=0.38, pz=s[PZ] - 0.36 * person.pelvis_height, pelvis_pitch=6, yaw=5, pelvis_roll=3)
    if person.styles.get("lunge", 0) == 0:  # dumbbells at the sides
        arms = dict(upper=(0.0, 0.1, -1.0), fore=(0.05, 0.05, -1.0), dorsal=(0.0, 1.0, 0.0), frame="trunk")
    else:  # hands on the hips
        arms = dict(upper=(-0.25, 0.8, -0.5), fore=(0.5, -0.7, -0.2), dorsal=(0.3, 0.6, 0.7), frame="trunk")
    s, bottom = _arm(s, person, **arms), _arm(bottom, person, **arms)
    return Template([s, bottom, bottom, s, s], [0.35, 0.08, 0.37, 0.2], 2.8, alternate=True)


def _burpee(person: Person) -> Template:
    s = standing_pose(person)
    stand = _hanging(person, s)
    plank, bottom, hands = _push_up_poses(person)
    shift = hands[0] - 0.45  # feet at x = 0, hands on the floor in front of them
    plank, bottom = plank.copy(), bottom.copy()
    plank[PX] -= shift  # place the plank so the hands land at x = 0.45
    bottom[PX] -= shift
    hands = hands + [0.45 - hands[0], 0.0, 0.0]
    crouch = _pose(s, pz=0.5 * person.pelvis_height, px=-0.12, pelvis_pitch=55, trunk_flex=20)
    crouch = _reach(crouch, person, hands, (-1.0, 0.4, 0.4), (1.0, 0.0, 0.3))
    plank = _reach(plank, person, hands, (-1.0, 0.7, 0.6), (1.0, 0.0, 0.3))
    bottom = _reach(bottom, person, hands, (-1.0, 0.7, 0.6), (1.0, 0.0, 0.3))
    style = person.styles.get("burpee", 0)
    if style == 2:  # clap overhead in the jump
        reach_up = _arm(s, person, (0.1, 0.2, 1.0), (0.05, 0.1, 1.0), (-1.0, 0.0, 0.0))
    else:  # arms swing forward to about shoulder height
        reach_up = _arm(s, person, (0.8, 0.2, -0.5), (0.9, 0.1, -0.2), (0.0, 1.0, 0.3))
    if style == 0:  # with a push-up
        poses = [stand, crouch, plank, bottom, plank, crouch, reach_up, stand]
        fractions = [0.13, 0.1, 0.11, 0.11, 0.1, 0.19, 0.16, 0.1]
        jump, duration = 5, 4.4
    else:
        poses = [stand, crouch, plank, crouch, reach_up, stand]
        fractions = [0.17, 0.13, 0.13, 0.24, 0.2, 0.13]
        jump, duration = 3, 3.6
    return Template(poses + [stand], fractions, duration, hops=((jump, 1, 0.55),))


def _bench_press(person: Person) -> Template:
    lying = np.zeros(N_CHANNELS)
    lying[PZ], lying[PELVIS_PITCH] = 0.56, -math.pi / 2  # on a bench, head towards −x
    # bar over the chest: elbows out and below the bench at the bottom, forearms upright throughout
    top = _arm(lying, person, (0.06, 0.25, 1.0), (0.0, 0.1, 1.0), (-1.0, 0.0, 0.0))
    bottom = _arm(lying, person, (0.2, 0.75, -0.5), (0.05, -0.05, 1.0), (-1.0, 0.0, 0.0))
    return Template([top, bottom, bottom, top, top], [0.48, 0.04, 0.4, 0.08], 2.4, posture="bench",
                    easing="cosine")


def _deadlift(person: Person) -> Template:
    s = standing_pose(person)
    top = _arm(_pose(s, trunk_flex=-3), person, (0.08, 0.06, -1.0), (0.1, 0.02, -1.0), (1.0, 0.0, 0.0))
    floor = _pose(s, px=-0.36 * person.height / 1.74, pz=s[PZ] - 0.3 * person.pelvis_height, pelvis_pitch=52,
                  trunk_flex=10)
    # shoulders ahead of the bar at the start of the pull
    floor = _arm(floor, person, (-0.22, 0.06, -1.0), (-0.2, 0.02, -1.0), (1.0, 0.0, 0.0))
    return Template([floor, top, top, floor, floor], [0.38, 0.08, 0.42, 0.12], 3.0, anchor=1, easing="cosine")


def _row(person: Person) -> Template:
    s = standing_pose(person)
    lean = 12 + 10 * person.styles.get("row", 0)
    bent = _pose(s, px=-0.15, pz=s[PZ] - 0.12, pelvis_pitch=45, trunk_flex=lean)
    hang = _arm(bent, person, (0.0, 0.06, -1.0), (0.03, 0.02, -1.0), (1.0, 0.0, 0.0))
    # pulled: the upper arm points back along the body, the forearm still hangs below the elbow
    pulled = _arm(bent, person, (-0.7, 0.3, -0.2), (0.05, 0.0, -1.0), (1.0, 0.0, 0.0))
    return Template([hang, pulled, pulled, hang, hang], [0.35, 0.08, 0.4, 0.17], 1.7, easing="cosine")


def _kettlebell_swing(person: Person) -> Template:
    s = standing_pose(person)
    hinge = _pose(s, px=-0.2, pz=s[PZ] - 0.1, pelvis_pitch=58, trunk_flex=5)
    hinge = _arm(hinge, person, (-0.35, -0.1, -0.9), (-0.5, -0.15, -0.85), (1.0, 0.0, 0.0))
    top = _arm(s, person, (1.0, -0.1, 0.05), (1.0, -0.12, 0.1), (0.0, 0.0, 1.0))
    return Template([hinge, top, hinge], [0.5, 0.5], 1.35, easing="cosine")


def _mountain_climber(person: Person) -> Template:
    plank, _, hands = _push_up_poses(person)
    left = _pose(plank, px=plank[PX] + 0.04, pelvis_roll=6)
    right = left.copy()
    right[PELVIS_ROLL] = -left[PELVIS_ROLL]
    pole, dorsal = (-1.0, 0.7, 0.6), (1.0, 0.0, 0.3)
    poses = [plank] + [_reach(p, person, hands, pole, dorsal) for p in (left, plank, right, plank)]
    return Template(poses, [0.25, 0.25, 0.25, 0.25], 0.95, posture="prone", easing="cosine")


_TEMPLATES: dict[str, Callable[[Person], Template]] = {
    "squat": _squat,
    "push_up": _push_up,
    "sit_up": _sit_up,
    "jumping_jack": _jumping_jack,
    "biceps_curl": _biceps_curl,
    "overhead_press": _overhead_press,
    "lunge": _lunge,
    "burpee": _burpee,
    "bench_press": _bench_press,
    "deadlift": _deadlift,
    "row": _row,
    "kettlebell_swing": _kettlebell_swing,
    "mountain_climber": _mountain_climber,
}


def template(person: Person, exercise: str) -> Template:
    """The repetition template of ``exercise`` for ``person`` (computed once per person)."""
    if exercise not in person._templates:
        if exercise not in _TEMPLATES:
            raise ValueError(f"Invalid 'exercise' {exercise!r}. Valid values are: {', '.join(_TEMPLATES)}")
        person._templates[exercise] = _TEMPLATES[exercise](person)
    return person._templates[exercise]


# ---------------------------------------------------------------------------------------------
# Postures and transitions


def _cached(person: Person, key: str, make: Callable[[], object]):
    if key not in person._templates:
        person._templates[key] = make()
    return person._templates[key]


def _to_world(poses: np.ndarray, origin, heading: float) -> np.ndarray:
    """Poses given in a frame at ``origin`` (x, y) turned by ``heading`` → world poses (K, 13)."""
    poses = np.array(poses, dtype=float, ndmin=2)
    c, s = math.cos(heading), math.sin(heading)
    x, y = poses[:, PX].copy(), poses[:, PY].copy()
    poses[:, PX] = origin[0] + c * x - s * y
    poses[:, PY] = origin[1] + s * x + c * y
    poses[:, YAW] += heading
    return poses


def _unwrap_to(pose: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``pose`` with each angle moved by whole turns to within π of ``reference``."""
    pose = pose.copy()
    d = pose[_ANGLES] - reference[_ANGLES]
    pose[_ANGLES] -= 2 * math.pi * np.round(d / (2 * math.pi))
    return pose


def _stand(person: Person) -> np.ndarray:
    """Standing relaxed with the arms hanging, in the set frame."""
    return _cached(person, "stand", lambda: _hanging(person, standing_pose(person)))


def _entry_path(person: Person, posture: str) -> list[np.ndarray]:
    """Poses (set frame) from standing into ``posture``, excluding standing itself."""
    return _cached(person, "entry:" + posture, lambda: _make_entry_path(person, posture))


def _make_entry_path(person: Person, posture: str) -> list[np.ndarray]:
    s = standing_pose(person)
    if posture == "prone":
        _, _, hands = _push_up_poses(person)
        crouch = _pose(s, pz=0.5 * person.pelvis_height, px=-0.45, pelvis_pitch=55, trunk_flex=20)
        return [_reach(crouch, person, hands, (-1.0, 0.4, 0.4), (1.0, 0.0, 0.3))]
    if posture == "supine":
        crouch = _hanging(person, _pose(s, pz=0.55 * person.pelvis_height, px=-0.1, pelvis_pitch=35))
        seated = _arm(_pose(s, pz=0.12, px=0.0, pelvis_pitch=-15), person, (0.2, 0.3, -1.0), (0.5, 0.1, -0.9),
                      (0.0, 1.0, 0.0))
        return [crouch, seated]
    if posture in ("bench", "sit"):
        seated = _pose(s, pz=0.56, px=-0.05, pelvis_pitch=-8, trunk_flex=15)
        seated = _arm(seated, person, (0.3, 0.1, -0.9), (1.0, -0.1, -0.1), (0.0, 0.3, 1.0))
        return [seated] if posture == "sit" else [seated, _pose(seated, pelvis_pitch=-45, trunk_flex=0)]
    return []


def transition_segment(start: float, poses: Sequence[np.ndarray], label: str,
                       rng: np.random.Generator) -> Segment:
    """Move through ``poses`` (world frame; the first is where the body is now), resting at each."""
    path = [np.asarray(poses[0], dtype=float)]
    for pose in poses[1:]:
        path.append(_unwrap_to(np.asarray(pose, dtype=float), path[-1]))
    path = np.array(path)
    step = np.diff(path, axis=0)
    distance = np.abs(step[:, :3]).sum(axis=1) + 0.4 * np.abs(step[:, _ANGLES]).sum(axis=1)
    durations = (0.6 + 0.7 * np.minimum(distance, 3.0)) * rng.uniform(0.85, 1.2, len(distance))
    knots = start + np.concatenate([[0.0], np.cumsum(durations)])
    return Segment(start, float(knots[-1]), label, Track(knots, path))


@dataclass
class Place:
    """Where a unit of the workout happens and how the body is when it ends."""

    origin: np.ndarray  # (x, y) of the set frame
    heading: float  # rad
    posture: str  # "stand", "prone", "supine", "bench", "sit"


def stand_at(person: Person, origin, heading: float) -> np.ndarray:
    """World pose of ``person`` standing relaxed at ``origin`` facing ``heading``."""
    return _to_world(_stand(person), origin, heading)[0]


def _lead_in(person: Person, start: float, pose: np.ndarray, place: Place, posture: str, label: str,
             rng: np.random.Generator, target: np.ndarray) -> tuple[Segment, Place, np.ndarray]:
    """Transition from ``pose`` (leaving ``place``) to ``target`` (set frame), through standing
    when the posture changes; the person may turn to face a new direction on the way."""
    turn = float(rng.normal(0.0, 0.8)) if place.posture == "stand" or posture != place.posture else 0.0
    heading = place.heading + turn
    origin = np.array([pose[PX], pose[PY]])
    path = [pose]
    if posture != place.posture:
        leave = _entry_path(person, place.posture)[::-1]
        enter = _entry_path(person, posture)
        if leave:
            path += list(_to_world(leave, place.origin, place.heading))
        path.append(stand_at(person, origin, heading))
        if enter:
            path += list(_to_world(enter, origin, heading))
    path.append(_to_world(target, origin, heading)[0])
    segment = transition_segment(start, path, label, rng)
    return segment, Place(origin, heading, posture), segment.track.poses[-1]


# ---------------------------------------------------------------------------------------------
# Sets, gait bouts and rests

_JITTER_SD = np.array([0.008] * 3 + [_deg(2.0)] * (N_CHANNELS - 3))  # per key pose and repetition


def set_segments(person: Person, exercise: str, start: float, pose: np.ndarray, place: Place,
                 rng: np.random.Generator, reps: int, transition_label: str, tempo: float = 1.0,
                 depth: float = 1.0) -> tuple[list[Segment], Place]:
    """A transition into position and a set of ``reps`` repetitions of ``exercise``.

    Each repetition varies in duration (and slows through the set) and in range of motion; every
    key pose gets small random deviations. ``tempo`` and ``depth`` multiply duration and range.
    """
    tpl = template(person, exercise)
    lead, place, first = _lead_in(person, start, pose, place, tpl.posture, transition_label, rng,
                                  tpl.poses[0])
    k = len(tpl.fractions)
    base = tpl.duration * person.tempo * person.exercise_tempo.get(exercise, 1.0) * tempo
    durations = base * np.exp(rng.normal(0.0, 0.07, reps)) * (1.0 + 0.015 * np.arange(reps))
    scales = person.range_of_motion * depth * np.clip(rng.normal(1.0, 0.06, reps), 0.8, 1.2)
    anchor = tpl.poses[tpl.anchor]
    poses = anchor + scales[:, None, None] * (tpl.poses[None, 1:] - anchor)  # (reps, K, 13)
    if tpl.alternate:  # every other repetition on the other leg
        for c in (PY, YAW, PELVIS_ROLL, TRUNK_TWIST):
            poses[1::2, :, c] = 2 * tpl.poses[0, c] - poses[1::2, :, c]
    # one deviation per distinct key pose, shared through a hold; none for the start pose
    group = np.concatenate([[0], np.cumsum(np.any(tpl.poses[2:] != tpl.poses[1:-1], axis=1))])
    jitter = (rng.normal(0.0, 1.0, (reps, group[-1] + 1, N_CHANNELS)) * _JITTER_SD)[:, group]
    jitter[:, group == group[-1]] = 0.0
    poses = _to_world((poses + jitter).reshape(reps * k, N_CHANNELS), place.origin, place.heading)
    # the same whole turns as the pose the lead-in ended in
    poses[:, _ANGLES] += (first - _to_world(tpl.poses[0], place.origin, place.heading)[0])[_ANGLES]
    t0 = lead.end
    knots = t0 + np.concatenate([[0.0], np.cumsum((durations[:, None] * tpl.fractions[None, :]).ravel())])
    terms = []
    if tpl.hops:
        starts, ends = [], []
        for move, count, _ in tpl.hops:
            a = knots[move:-1:k]
            b = knots[move + 1::k]
            edges = a[:, None] + (b - a)[:, None] * np.linspace(0.0, 1.0, count + 1)[None, :]
            starts.append(edges[:, :-1].ravel())
            ends.append(edges[:, 1:].ravel())
        order = np.argsort(np.concatenate(starts))
        terms.append(Hops(np.concatenate(starts)[order], np.concatenate(ends)[order], tpl.hops[0][2]))
    terms.append(Tremor(rng, t0, float(knots[-1]), person.tremor))
    body = Segment(t0, float(knots[-1]), exercise, Track(knots, np.vstack([first, poses]), tpl.easing), terms)
    return [lead, body], place

class Gait:
    """Walking or running on top of a base track: progress, bounce, sway and arm swing."""

    def __init__(self, person: Person, kind: str, start: float, end: float, heading: float,
                 rng: np.random.Generator, tempo: float = 1.0) -> None:
        self.kind = kind
        self.start, self.end = start, end
        self.ramp = 1.2 if kind == "walking" else 1.6
        step_rate = person.step_rate[kind] / tempo
        self.stride_rate = 0.5 * step_rate
        step_length = (0.41 if kind == "walking" else 0.62) * person.height
        step_length *= float(np.exp(rng.normal(0, 0.05)))
        self.speed = step_length * step_rate
        self.direction = (math.cos(heading), math.sin(heading))
        # slow drift of the stride rate, ±2 %
        self.mod_freq = 2 * math.pi * rng.uniform(0.03, 0.15, 2)
        self.mod_amp = 0.02 * self.stride_rate * rng.uniform(0.3, 1.0, 2) / self.mod_freq
        self.mod_phase = rng.uniform(0, 2 * math.pi, 2)
        self.duty = float(rng.uniform(0.55, 0.68))
        g = rng.uniform(0.8, 1.2, 8)
        if kind == "walking":
            self.amp = dict(bounce=0.022 * g[0], surge=0.012 * g[1], lateral=0.02 * g[2], yaw=_deg(5) * g[3],
                            roll=_deg(3.5) * g[4], pitch=_deg(2) * g[5], arm=_deg(16) * g[6],
                            elbow=_deg(10) * g[7])
        else:
            self.amp = dict(bounce=0.0, surge=0.015 * g[1], lateral=0.025 * g[2], yaw=_deg(6) * g[3],
                            roll=_deg(4) * g[4], pitch=_deg(3) * g[5], arm=_deg(32) * g[6],
                            elbow=_deg(15) * g[7])

    def _phase(self, t: np.ndarray) -> np.ndarray:
        """Stride phase in cycles."""
        u = t - self.start
        phase = self.stride_rate * u
        for f, a, p in zip(self.mod_freq, self.mod_amp, self.mod_phase, strict=False):
            phase = phase + a * (np.sin(f * u + p) - math.sin(p))
        return phase

    def _progress(self, t: np.ndarray) -> np.ndarray:
        """Distance walked: speed faded in and out with minimum-jerk ramps (closed form)."""
        r, a, b = self.ramp, self.start, self.end
        u_in = np.clip((t - a) / r, 0.0, 1.0)
        u_out = np.clip((b - t) / r, 0.0, 1.0)
        ramp_area = lambda u: u**4 * (2.5 + u * (-3.0 + u))  # noqa: E731  ∫ ease
        total_mid = (b - a) - 2 * r
        dist = np.where(
            t < a + r,
            r * ramp_area(u_in),
            np.where(t <= b - r, 0.5 * r + (t - a - r), 0.5 * r + total_mid + r * (0.5 - ramp_area(u_out))),
        )
        return self.speed * dist

    def __call__(self, t: np.ndarray, out: np.ndarray) -> None:
        amp = self.amp
        env = _envelope(t, self.start, self.end, self.ramp)
        phase = 2 * math.pi * self._phase(t)
        stride_s, stride_c = np.sin(phase), np.cos(phase)
        step = 2.0 * phase
        forward = self._progress(t) + env * amp["surge"] * np.sin(step)
        lateral = env * amp["lateral"] * stride_s
        cx, cy = self.direction
        out[:, PX] += cx * forward - cy * lateral
        out[:, PY] += cy * forward + cx * lateral
        if self.kind == "walking":
            out[:, PZ] += env * amp["bounce"] * -np.cos(step)
        else:
            period = 1.0 / (2.0 * self.stride_rate)
            s = np.mod(step / (2 * math.pi), 1.0) * period
            out[:, PZ] += env * hop_height(s, period, self.duty * period)
        out[:, YAW] += env * amp["yaw"] * stride_s
        out[:, PELVIS_ROLL] += env * amp["roll"] * stride_c
        out[:, PELVIS_PITCH] += env * amp["pitch"] * np.sin(step + 0.5)
        out[:, TRUNK_TWIST] -= env * 1.3 * amp["yaw"] * stride_s
        out[:, SH_FLEX] -= env * amp["arm"] * stride_s
        out[:, ELBOW] -= env * amp["elbow"] * np.sin(phase + 0.4)


def gait_segment(person: Person, kind: str, start: float, pose: np.ndarray, place: Place, duration: float,
                 rng: np.random.Generator, transition_label: str,
                 tempo: float = 1.0) -> tuple[list[Segment], Place]:
    """Stand up if needed, then walk or run straight ahead for ``duration`` seconds."""
    stride = _cached(person, "gait:" + kind, lambda: _gait_posture(person, kind))
    lead, place, first = _lead_in(person, start, pose, place, "stand", transition_label, rng, _stand(person))
    a = lead.end
    b = a + duration
    ramp = 1.2 if kind == "walking" else 1.6
    posture = _unwrap_to(_to_world(stride, place.origin, place.heading)[0], first)
    track = Track([a, a + ramp, b - ramp, b], np.array([first, posture, posture, first]))
    body = Segment(a, b, kind, track, [Gait(person, kind, a, b, place.heading, rng, tempo)])
    end = body.end_pose()
    return [lead, body], Place(np.array([end[PX], end[PY]]), place.heading, "stand")


def _gait_posture(person: Person, kind: str) -> np.ndarray:
    s = standing_pose(person)
    if kind == "walking":
        return _arm(_pose(s, pelvis_pitch=2), person, (0.05, 0.12, -1.0), (0.25, 0.06, -1.0), (0.2, 1.0, 0.0))
    return _arm(_pose(s, pz=s[PZ] - 0.03, pelvis_pitch=6, trunk_flex=3), person, (0.05, 0.15, -1.0),
                (1.0, -0.15, 0.15), (0.0, 1.0, 0.3))


_GESTURES = {  # (upper arm, forearm, back of the wrist), trunk frame
    "drink": ((0.3, 0.1, -0.9), (0.2, -0.5, 0.85), (1.0, 0.5, 0.0)),
    "check_watch": ((0.35, 0.0, -0.9), (0.3, -0.95, 0.2), (0.0, 0.0, 1.0)),
    "hands_on_hips": ((-0.25, 0.8, -0.5), (0.5, -0.7, -0.2), (0.3, 0.6, 0.7)),
    "arms_crossed": ((0.35, 0.1, -0.9), (0.2, -1.0, 0.15), (1.0, 0.0, 0.3)),
    "stretch": ((0.05, 0.3, 1.0), (0.0, 0.1, 1.0), (-1.0, 0.0, 0.0)),
    "wipe_face": ((0.45, 0.15, -0.8), (0.15, -0.4, 0.9), (1.0, 0.4, 0.2)),
}
_REST_VARIANTS = ("standing", "sitting", "fidget", "pacing")
# how far the body drifts in a small fidget: position (m) and angles (rad), standing / sitting
_FIDGET_SD = {
    "stand": np.array([0.015, 0.015, 0.005, _deg(7), _deg(1.5), _deg(1.5), _deg(3), _deg(3)] + [_deg(6)] * 5),
    "sit": np.array([0.0, 0.0, 0.0, 0.0, _deg(2), 0.0, _deg(4), _deg(3)] + [_deg(6)] * 5),
}


def _rest_poses(person: Person, posture: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    def make():
        base = _entry_path(person, "sit")[-1] if posture == "sit" else _stand(person)
        gestures = {name: _arm(base, person, *arm, frame="trunk") for name, arm in _GESTURES.items()
                    if not (posture == "sit" and arm[0][2] > 0)}  # no stretching overhead while seated
        return base, gestures
    return _cached(person, "rest:" + posture, make)


def rest_segments(person: Person, start: float, pose: np.ndarray, place: Place, duration: float,
                  rng: np.random.Generator, variant: str | None = None) -> tuple[list[Segment], Place]:
    """A rest: settle into standing or sitting, then stay there, shifting a little now and then
    and sometimes drinking, checking the watch, stretching, ...

    ``variant`` is "standing", "sitting", "fidget" (standing, restless) or "pacing" (standing,
    walking a few steps at some point); random when None.
    """
    if variant is None:
        variant = _REST_VARIANTS[int(rng.choice(4, p=[0.25, 0.25, 0.25, 0.25]))]
    posture = "sit" if variant == "sitting" else "stand"
    base, gestures = _rest_poses(person, posture)
    lead, place, first = _lead_in(person, start, pose, place, posture, "rest", rng, base)
    a = lead.end
    b = a + max(duration, 2.0)
    restless = 2.0 if variant == "fidget" else 1.0
    sd = _FIDGET_SD[posture] * restless
    names = list(gestures)
    knots, poses = [a], [first]
    t = a
    while True:
        if rng.random() < 0.2 * restless:
            gesture = gestures[names[int(rng.integers(len(names)))]]
            gesture = _to_world(gesture, place.origin, place.heading)[0]
            gesture = _unwrap_to(gesture, first)
            swing = float(np.abs(gesture[SH_FLEX:] - first[SH_FLEX:]).sum())  # rad, all arm joints
            reach = (0.4 + 0.3 * swing) * float(rng.uniform(0.8, 1.25))
            hold = float(rng.uniform(0.8, 4.0))
            if t + 2 * reach + hold > b - 0.5:
                break
            knots += [t + reach, t + reach + hold, t + 2 * reach + hold]  # there, hold, and back
            poses += [gesture + sd * rng.normal(0.0, 0.3, N_CHANNELS) for _ in range(2)]
            poses.append(first + sd * rng.normal(0.0, 1.0, N_CHANNELS))
            t += 2 * reach + hold
        pause = float(rng.uniform(0.8, 3.0)) / restless
        if t + pause > b - 0.5:
            break
        t += pause
        knots.append(t)
        poses.append(first + sd * rng.normal(0.0, 1.0, N_CHANNELS))
    knots.append(b)
    poses.append(first)
    terms = []
    if variant == "pacing" and b - a > 8.0:
        length = float(rng.uniform(4.0, min(12.0, b - a - 2.0)))
        w0 = a + float(rng.uniform(0.5, b - a - length - 0.5))
        terms.append(Gait(person, "walking", w0, w0 + length, float(first[YAW]), rng, tempo=1.3))
    body = Segment(a, b, "rest", Track(knots, np.array(poses)), terms)
    end = body.end_pose()
    return [lead, body], Place(np.array([end[PX], end[PY]]), place.heading, place.posture)
