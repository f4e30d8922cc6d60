"""The data of a Foundation X run: the recipe's datasets, checked against their adapters, and a
data order that draws every optimiser step from the dataset of that step's unit.

The datasets are concatenated into one index space (dataset ``d``'s sample ``i`` is
``offset[d] + i``), so the shared engine keeps reading one dataset. :class:`PhaseSampler` deals
each rank its indices step by step: the phase of the step (:func:`~xrayfm.pretrain.cyclic_schedule.phase_at`)
names the unit, hence the dataset, and the samples come from a seeded permutation of that dataset
that starts afresh with each phase (the reference iterates a freshly shuffled loader per slot and
per lock / release call), sharded by rank as :class:`~xrayfm.train.sampler.StepSampler` shards.
Everything follows from the step, so a resumed run reads exactly what an uninterrupted one would.
A unit draws only the samples annotated for its task (:func:`unit_members`): a localization unit of a
dataset whose boxes cover a few of its images (NIH ChestX-ray14: 880 of 112,120) reads those images,
as the reference reads a separate box file per localization dataset. A recipe dataset may also be
a shard folder (``adapter: shards``, read by index); its units read every sample, so build one
shard folder per recipe dataset from the images that dataset annotates.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from xrayfm.data.base import Record, Transform, XrayDataset
from xrayfm.errors import XrayfmError
from xrayfm.pretrain.cyclic_schedule import Phase, total_steps
from xrayfm.pretrain.multitask_recipe import MultiTaskRecipe, RecipeError
from xrayfm.train.streaming import ShardSplit, open_dataset


def dataset_root(root: str, data_root: str | Path | None) -> Path:
    """A recipe's dataset root: absolute as written, or relative to ``data_root`` (default: the working folder)."""
    path = Path(root).expanduser()
    return path if path.is_absolute() or data_root is None else Path(data_root) / path


def build_recipe_datasets(
    recipe: MultiTaskRecipe,
    *,
    data_root: str | Path | None = None,
    split: str = "train",
    transform: Transform | None = None,
) -> dict[str, XrayDataset | ShardSplit]:
    """Build every dataset of ``recipe`` through its adapter and check that it carries the recipe's tasks.

    Args:
        recipe: The recipe.
        data_root: Folder that relative ``root`` entries are relative to.
        split: Split to read.
        transform: Applied to every sample (it must bring images, masks and boxes to one size).

    Returns:
        Datasets by recipe name, in recipe order.

    Raises:
        RecipeError: A dataset without samples in ``split``, or a recipe task whose kind or classes
            (in order) differ from what the adapter gives; the message names the recipe key.
        XrayfmError: The adapter cannot build the dataset (unknown name or option, missing root...).
    """
    datasets = {}
    for name, entry in recipe.datasets.items():
        # an adapter's dataset, or a shard split read by index
        ds = open_dataset(entry.adapter, dataset_root(entry.root, data_root), split, transform=transform,
                          options=entry.options, stream=False)  # fmt: skip
        if len(ds) == 0:
            raise RecipeError(f"datasets.{name}: adapter {entry.adapter!r} found no {split} samples in {ds.root}")
        for task_name, task in entry.tasks.items():
            spec, given = task.spec, ds.task_for(task.spec.sample_key)
            where = f"datasets.{name}.tasks.{task_name}"
            if given is None:
                offered = [f"{t.kind} {list(t.classes)}" for t in ds.tasks] or "no labels"
                raise RecipeError(
                    f"{where}: the {entry.adapter!r} adapter gives no {spec.kind} targets with these options "
                    f"(it gives {offered}); change the task or the dataset's options"
                )
            if given.kind != spec.kind or given.classes != spec.classes:
                raise RecipeError(
                    f"{where}: the recipe says {spec.kind} {list(spec.classes)} but the {entry.adapter!r} adapter "
                    f"gives {given.kind} {list(given.classes)}; copy the adapter's classes, in its order"
                )
        datasets[name] = ds
    return datasets


def _annotated(record: Record, kind: str) -> bool:
    """Whether ``record`` carries a target for a task of ``kind`` (a classification row may not be all unknown)."""
    if kind == "detection":
        return record.boxes is not None
    if kind == "segmentation":
        return record.mask is not None
    return record.labels is not None and not bool(np.isnan(record.labels).all())


def unit_members(
    recipe: MultiTaskRecipe, datasets: Mapping[str, XrayDataset | ShardSplit], world: int = 1
) -> dict[str, list[int]]:
    """Per cycle unit (``dataset/task``), the indices of its dataset's samples annotated for that task.

    Read from the records, without opening an image.

    Raises:
        RecipeError: A unit with fewer annotated samples than ``world`` processes, naming the unit.
    """
    members: dict[str, list[int]] = {}
    for unit in recipe.cycle:
        if unit.key in members:
            continue
        ds = datasets[unit.dataset]
        if isinstance(ds, ShardSplit):  # no records to read without decoding: every sample (unannotated ones add 0)
            members[unit.key] = list(range(len(ds)))
        else:
            members[unit.key] = [i for i, rec in enumerate(ds.records) if _annotated(rec, unit.kind)]
        if len(members[unit.key]) < world:
            raise RecipeError(
                f"cycle unit {unit.key}: {len(members[unit.key])} of the {len(ds)} samples of dataset "
                f"{unit.dataset!r} carry {unit.kind} targets, fewer than the {world} processes"
            )
    return members


class PhaseSampler(Sampler[int]):
    """Indices into the concatenated datasets for one rank, each step's from its unit's annotated samples.

    Within a phase, position ``p`` of this rank (``(step - phase.start) * samples_per_step + k``)
    reads pass ``p // (n // world)`` of the unit's ``n`` members: a permutation seeded by
    ``(seed, phase, pass)`` of which this rank takes every ``world``-th index from ``rank`` (the tail
    that does not divide evenly is dropped, as :class:`~xrayfm.train.sampler.StepSampler` drops it).

    Args:
        phases: The schedule (:func:`~xrayfm.pretrain.cyclic_schedule.expand_cycle`).
        offsets: Dataset name -> index of its first sample in the concatenation.
        members: Unit key -> indices (within its dataset) of the samples it reads (:func:`unit_members`).
        samples_per_step: Samples one rank reads per optimiser step (batch size x accumulation).
        seed: The run's seed.
        rank: This process's global rank.
        world: Number of processes.
        start: Samples of this rank already read (a multiple of ``samples_per_step``).

    Raises:
        XrayfmError: A unit with fewer samples than processes, or ``start`` inside a step.
    """

    def __init__(
        self,
        phases: Sequence[Phase],
        offsets: Mapping[str, int],
        members: Mapping[str, Sequence[int]],
        *,
        samples_per_step: int,
        seed: int,
        rank: int,
        world: int,
        start: int = 0,
    ) -> None:
        small = {unit: len(m) for unit, m in members.items() if len(m) < world}
        if small:
            raise XrayfmError(f"units {small} have fewer samples than the {world} processes")
        if start % samples_per_step:
            raise XrayfmError(f"start {start} is not a whole number of steps of {samples_per_step} samples")
        self.phases, self.offsets = list(phases), dict(offsets)
        self.members = {unit: torch.as_tensor(list(m), dtype=torch.long) for unit, m in members.items()}
        self.samples_per_step, self.seed, self.rank, self.world, self.start = samples_per_step, seed, rank, world, start
        self._starts = [p.start for p in self.phases]

    def __len__(self) -> int:
        return max(0, total_steps(self.phases) * self.samples_per_step - self.start)

    def _pass(self, phase_index: int, epoch: int) -> list[int]:
        """This rank's share of pass ``epoch`` over the members of phase ``phase_index``'s unit, as global indices."""
        unit = self.phases[phase_index].unit
        members = self.members[unit.key]
        n = len(members)
        words = np.random.SeedSequence([self.seed, phase_index, epoch]).generate_state(2)
        g = torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
        order = torch.randperm(n, generator=g)[self.rank : (n // self.world) * self.world : self.world]
        return (members[order] + self.offsets[unit.dataset]).tolist()

    def __iter__(self) -> Iterator[int]:
        first = self.start // self.samples_per_step
        cached: tuple[int, int] | None = None
        indices: list[int] = []
        for step in range(first, total_steps(self.phases)):
            i = bisect.bisect_right(self._starts, step) - 1
            per_rank = len(self.members[self.phases[i].unit.key]) // self.world
            for k in range(self.samples_per_step):
                epoch, offset = divmod((step - self.phases[i].start) * self.samples_per_step + k, per_rank)
                if cached != (i, epoch):
                    cached, indices = (i, epoch), self._pass(i, epoch)
                yield indices[offset]
