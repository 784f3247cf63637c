"""Curriculum over the number of segments: stages [(first step, segments), ...], checked (`check_curriculum`) and
looked up by step (`stage_at`, `curriculum_segments`). A stage's first step is where it begins at the latest: with
TrainConfig.curriculum_accuracy the trainer may begin it earlier. The learning-rate schedule is transformers', built
in `rmt.train.optim`."""

from __future__ import annotations

from rmt.errors import InputError


def check_curriculum(stages: list[tuple[int, int]]) -> None:
    """Refuse stages that are not pairs of whole numbers (first step, segments) starting at step 0, with strictly
    increasing first steps and positive segment counts."""
    if isinstance(stages, str) or not stages:
        raise InputError(f"curriculum needs a list of (first step, segments) stages, got {stages!r}")
    for stage in stages:
        if not (
            isinstance(stage, list | tuple)
            and len(stage) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in stage)
        ):
            raise InputError(f"a curriculum stage is a pair of whole numbers (first step, segments), got {stage!r}")
    if stages[0][0] != 0:
        raise InputError(f"the first curriculum stage must start at step 0, got {stages[0][0]}")
    starts = [first for first, _ in stages]
    if starts != sorted(starts) or len(set(starts)) != len(starts):
        raise InputError(f"curriculum stage starts must be strictly increasing, got {starts}")
    if any(n <= 0 for _, n in stages):
        raise InputError(f"curriculum segment counts must be > 0, got {[n for _, n in stages]}")


def stage_at(step: int, stages: list[tuple[int, int]]) -> int:
    """The index of the stage that has begun by `step` by its first step (stages checked by `check_curriculum`)."""
    return max(i for i, (first, _) in enumerate(stages) if step >= first)


def curriculum_segments(step: int, stages: list[tuple[int, int]]) -> int:
    """Number of segments to train on at `step` by the stages' first steps, given stages [(first_step,
    num_segments), ...], checked first.

    Example: [(0, 1), (500, 2), (1000, 4)] trains on 1 segment for steps 0-499, 2 for 500-999 and 4 from step 1000 on.
    """
    check_curriculum(stages)
    return stages[stage_at(step, stages)][1]


def linear_curriculum(
    start_segments: int, max_segments: int, total_steps: int, hold_fraction: float = 0.5
) -> list[tuple[int, int]]:
    """Stages growing by one segment from `start_segments` to `max_segments`, evenly over the first
    (1 - hold_fraction) of training, then holding `max_segments` (the RMT papers' +1 segment per stage)."""
    if not 1 <= start_segments <= max_segments:
        raise InputError(f"need 1 <= start_segments <= max_segments, got {start_segments}, {max_segments}")
    count = max_segments - start_segments + 1
    ramp_steps = int(total_steps * (1.0 - hold_fraction))
    per_stage = ramp_steps // count if count > 1 else 0
    return [(i * per_stage, start_segments + i) for i in range(count)] if per_stage else [(0, max_segments)]
