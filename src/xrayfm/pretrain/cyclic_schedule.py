"""Cyclic & Lock-Release: the recipe's cycle of units unrolled into phases of optimiser steps.

Each unit of the cycle becomes one phase, or two for a detection / segmentation unit with a lock:
first *locked* (backbone, pyramid and shared decoder frozen, only the unit's head trains) for
``lock_fraction`` of the unit's length (reference: ``len(loader) // 2`` iterations of a shuffled
loader, jlianglab/Foundation_X engine.py L108-110), then *released* (everything trains) for the
whole length. Classification units have no lock. The phases of ``cycles`` passes over the cycle
lie end to end on one step axis, so a training loop (and an exact resume) finds the phase of any
step with :func:`phase_at`.

Frozen parameters stay in the optimiser: :meth:`~xrayfm.pretrain.multitask_model.MultiTaskModel.lock`
sets their ``grad`` to None, and PyTorch's optimisers (AdamW's decoupled weight decay included)
skip a parameter without a gradient, so they do not move until released.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from xrayfm.errors import XrayfmError
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_recipe import LOCKABLE_KINDS, CycleUnit, MultiTaskRecipe


@dataclass(frozen=True)
class Phase:
    """A run of optimiser steps on one unit, locked or released.

    Attributes:
        unit: The cycle unit.
        locked: True: only the unit's head trains.
        steps: Optimiser steps.
        cycle: Which pass over the cycle (0-based).
        start: Global step at which the phase begins.
    """

    unit: CycleUnit
    locked: bool
    steps: int
    cycle: int
    start: int

    @property
    def key(self) -> str:
        """The unit's ``dataset/task`` key."""
        return self.unit.key

    @property
    def end(self) -> int:
        """First global step after the phase."""
        return self.start + self.steps


def unit_steps(unit: CycleUnit, steps_per_epoch: Mapping[str, int]) -> int:
    """Optimiser steps of a unit's released phase: its ``steps``, or ``epochs`` x its steps per epoch.

    Raises:
        XrayfmError: A unit counted in epochs whose steps per epoch are unknown or not positive.
    """
    if unit.steps is not None:
        return unit.steps
    per_epoch = steps_per_epoch.get(unit.key)
    if not isinstance(per_epoch, int) or per_epoch < 1:
        raise XrayfmError(
            f"unit {unit.key!r} is {unit.epochs} epoch(s) long, but its steps per epoch are {per_epoch!r}; "
            "give a positive number (len of its loader) or set the unit's 'steps'"
        )
    return max(1, round(unit.epochs * per_epoch))


def expand_cycle(recipe: MultiTaskRecipe, steps_per_epoch: Mapping[str, int] | None = None) -> list[Phase]:
    """The phases of all ``recipe.cycles`` passes over the cycle, in order.

    Args:
        recipe: The recipe.
        steps_per_epoch: Loader length per ``dataset/task`` key, for units counted in epochs.

    Returns:
        Phases end to end from step 0; a lockable unit whose lock rounds to 0 steps has no locked phase.

    Raises:
        XrayfmError: See :func:`unit_steps`.
    """
    phases: list[Phase] = []
    start = 0
    for cycle in range(recipe.cycles):
        for unit in recipe.cycle:
            length = unit_steps(unit, steps_per_epoch or {})
            locked = math.floor(unit.lock_fraction * length) if unit.kind in LOCKABLE_KINDS else 0
            for is_locked, steps in ((True, locked), (False, length)):
                if steps > 0:
                    phases.append(Phase(unit, is_locked, steps, cycle, start))
                    start += steps
    return phases


def total_steps(phases: Sequence[Phase]) -> int:
    """Optimiser steps of all phases."""
    return phases[-1].end if phases else 0


def phase_at(phases: Sequence[Phase], step: int) -> tuple[int, int]:
    """Which phase a global step falls in, and how far into it.

    Returns:
        (index into ``phases``, steps already done in that phase).

    Raises:
        XrayfmError: ``step`` is negative or past the last phase.
    """
    if step < 0 or step >= total_steps(phases):
        raise XrayfmError(f"step {step} is outside the schedule's {total_steps(phases)} steps")
    index = bisect.bisect_right([p.start for p in phases], step) - 1
    return index, step - phases[index].start


def lock(model: MultiTaskModel, unit: CycleUnit | str) -> None:
    """Freeze the backbone, pyramid and shared decoder so only ``unit``'s head trains.

    Raises:
        XrayfmError: ``unit`` is a classification unit (no lock phase) or not one of the model's.
    """
    key = unit.key if isinstance(unit, CycleUnit) else unit
    kind = model.task(key).kind
    if kind not in LOCKABLE_KINDS:
        raise XrayfmError(f"unit {key!r} is a {kind} unit: only {LOCKABLE_KINDS} units have a lock phase")
    model.lock(key)


def release(model: MultiTaskModel) -> None:
    """Let everything the lock froze train again."""
    model.release()


def enter_phase(model: MultiTaskModel, phase: Phase) -> None:
    """Lock or release ``model`` as ``phase`` says (call at the first step of each phase, and on resume)."""
    if model.locked is not None and (not phase.locked or model.locked != phase.key):
        release(model)
    if phase.locked:
        lock(model, phase.unit)
