"""Canonical exercise names shared by the simulator, the importers and the models.

Real data sets name their classes in their own way; importers map them onto these names so that a
model trained on one source can be evaluated on another.
"""

__all__ = ["REST", "SIMULATED", "CANONICAL"]

REST = "rest"

# Exercises the simulator synthesises (issue "Simulator, recordings and replay").
SIMULATED = (
    "rest",
    "walking",
    "running",
    "squat",
    "push_up",
    "sit_up",
    "jumping_jack",
    "biceps_curl",
    "overhead_press",
    "lunge",
    "burpee",
    "bench_press",
    "deadlift",
    "row",
)

# Every name a recording file written by harstream may carry.
CANONICAL = SIMULATED + (
    "sitting",
    "standing",
    "lying",
    "walking_upstairs",
    "walking_downstairs",
    "lateral_raise",
)
