"""The training engine every method uses: the loop on Lightning Fabric, optimisers and
schedules, checkpoints and resume, the step sampler, seeding and FSDP.

Method packages (``xrayfm.pretrain``, ``xrayfm.finetune``) import from here; this package imports
none of them.
"""

from xrayfm.train.checkpoint import CHECKPOINT
from xrayfm.train.config import TrainConfig
from xrayfm.train.distributed import check_devices, is_global_zero
from xrayfm.train.engine import train
from xrayfm.train.sampler import StepSampler
from xrayfm.train.schedules import cosine_lr

__all__ = ["CHECKPOINT", "StepSampler", "TrainConfig", "check_devices", "cosine_lr", "is_global_zero", "train"]
