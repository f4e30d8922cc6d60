"""The training engine every method uses: the loop on Lightning Fabric, optimisers (AdamW, SGD)
and schedules (warmup then cosine, constant or poly), durations in steps or epochs, checkpoints
(by steps, by minutes, on SIGINT / SIGTERM) and resume, the step sampler, seeding and FSDP.

Method packages (``xrayfm.pretrain``, ``xrayfm.finetune``) import from here; this package imports
none of them.
"""

from xrayfm.train.checkpoint import CHECKPOINT, TrainingInterrupted
from xrayfm.train.config import TrainConfig, resolve_steps
from xrayfm.train.distributed import check_devices, is_global_zero
from xrayfm.train.engine import train
from xrayfm.train.sampler import StepSampler
from xrayfm.train.schedules import lr_factor
from xrayfm.train.seeding import seed_everything

__all__ = [
    "CHECKPOINT", "StepSampler", "TrainConfig", "TrainingInterrupted", "check_devices", "is_global_zero", "lr_factor",
    "resolve_steps", "seed_everything", "train",
]  # fmt: skip
