"""How test_readme.py runs the README's code blocks in a scratch folder: the mapping kept beside it.

README commands name data a new user has (``/data/nih``, ``IMAGE.dcm``) and run for hours
(``--steps 100000``). Here every such name becomes a small stand-in the test writes once (a phantom
in NIH, CheXpert, JSRT or MURA layout, a DICOM phantom, tiny pretraining and fine-tuning runs), and
every training command is shrunk by options appended to it (argparse keeps the last value). Each
entry below must still match the README (a test checks it), so none of this can silently go
stale: when a README line changes, its entry here has to change with it.

Placeholders in braces are filled by the test: ``{nih}``, ``{chexpert}``, ``{jsrt}``, ``{mura}``,
``{mine}`` (stand-in dataset roots), ``{dicom}``, ``{png}`` (image files), ``{shared}``
(``../shared/datasets``), ``{port}`` (a free TCP port).
"""

from __future__ import annotations

#: Text replaced in every block before it runs (README text -> stand-in), in this order.
SUBSTITUTIONS: list[tuple[str, str]] = [
    ("/data/nih", "{nih}"),
    ("/data/NIH", "{nih}"),
    ("/data/CheXpert-v1.0", "{chexpert}"),
    ("/data/jsrt", "{jsrt}"),
    ("/data/MURA-v1.1", "{mura}"),
    ("/data/mine", "{mine}"),
    ("../shared/datasets", "{shared}"),
    ("IMAGE.dcm", "{dicom}"),
    ("IMAGE.png", "{png}"),
    ("image.dcm", "{dicom}"),
    ("image.png", "{png}"),
    ("case.dcm", "{dicom}"),
    ("DATASET_ROOT", "{nih}"),
    ("inspect ROOT --dataset chexpert", "inspect {chexpert} --dataset chexpert"),
    ("--pretrained W ", "--pretrained runs/mim_s "),  # W: EVA-X S/16 weights, as the recipes build S/16
    ("--port 8000", "--port {port}"),
    ("127.0.0.1:8000", "127.0.0.1:{port}"),
    # Python blocks: the same calls, small
    ('steps=100_000, batch_size=256))', "steps=1, batch_size=4, warmup_steps=0), img_size=32)"),
    ("steps=2000, batch_size=16,", "steps=2, batch_size=4,"),  # the run_finetune snippet
    ('pretrained="runs/mim", img_size=256,', 'pretrained="runs/mim", img_size=32, n_boot=10,'),
    ('n=500, seed=0, layout="nih_cxr14")', 'n=8, seed=0, layout="nih_cxr14", size=64)'),
    # the fine-tuned release tag downloads from the Hugging Face hub: load a pretraining run instead
    ('"eva_x_small_patch16.ft_chestxray14", num_classes=0)', '"runs/mim_s", num_classes=0)'),
]  # fmt: skip

#: Options appended to an ``xrayfm`` command, by its leading words: small sizes and few steps.
#: Typed ``--steps`` / ``--warmup`` / ``--accumulate`` switch off the epochs, warmup epochs and global
#: batch of a recipe or default (finetune counts 10 epochs; the EVA-X recipes a global batch of 1024
#: or 2048 images, which at ``--batch-size 4`` would accumulate hundreds of micro-batches per step).
TRAIN = [
    "--steps",
    "2",
    "--img-size",
    "32",
    "--batch-size",
    "4",
    "--warmup",
    "1",
    "--accumulate",
    "1",
    "--log-every",
    "1",
    "--n-boot",
    "10",
    "--eval-split",
    "test",
]
OVERRIDES: dict[tuple[str, ...], list[str]] = {
    ("demo",): [
        "-n",
        "24",
        "--size",
        "64",
        "--steps",
        "1",
        "--img-size",
        "32",
        "--finetune-steps",
        "1",
        "--anatomy-steps",
        "2",
    ],
    ("pretrain", "anatomy"): "--steps 1 --img-size 32 --batch-size 4 --queue-size 16 --split-bn 0 --warmup 0 "
    "--accumulate 1 --val-fraction 0.25".split(),
    ("evaluate", "anatomy"): ["--img-size", "32", "--max-images", "8", "--projection", "pca"],
    ("phantom",): ["-n", "8", "--size", "64"],
    ("stats",): ["--size", "32", "--max-images", "8"],
    ("inspect",): ["--check", "4"],
    ("pretrain", "mim"): "--steps 1 --img-size 32 --batch-size 4 --warmup 0 --accumulate 1".split(),
    ("pretrain", "multitask"): ["--steps", "4", "--img-size", "32"],
    # the recipes name EVA-X S/16: Ti/16 here (runs/mim_s and W are Ti/16 stand-ins too)
    ("finetune",): [*TRAIN, "--arch", "eva_x_tiny_patch16"],
    # one run per backbone instead of backbones x 3 modes x 3 fractions x 3 seeds
    ("sweep",): [*TRAIN, "--modes", "lora", "--fractions", "1", "--seeds", "0"],
    ("evaluate",): ["--n-boot", "10"],
    ("compare",): ["--n-boot", "10"],
    ("serve",): ["--port", "{port}"],
}

#: Further options for one README command (matched by the start of its text), with the reason.
EXTRA: dict[str, tuple[list[str], str]] = {
    "xrayfm finetune --config eva_x_cls_chestxray14 nih_cxr14 /data/nih": (
        ["--allow-empty-classes"], "the NIH-layout phantom has 5 of the 14 findings"),
}  # fmt: skip

#: Commands that do not run here, by the start of their text in the README (continuations joined,
#: comment dropped), with the reason. ``make`` targets are checked with ``make -n`` instead.
SKIPS: dict[str, str] = {
    "make test": "the test suite running itself; checked with `make -n test`",
    "make demo": "the full-size demo (minutes); checked with `make -n demo`, and `xrayfm demo` runs shrunk "
    "under 'Command line'",
    "python3 -m venv .venv && .venv/bin/pip install": "creates a virtualenv and installs from the network",
    "xrayfm pretrain mim ... --accelerator gpu": "needs GPUs ('...' stands for a dataset and options)",
    "torchrun --nnodes 2": "multi-node launch on GPUs",
    "xrayfm finetune jsrt /data/jsrt --arch swin_base_patch4_window7_224 --pretrained FoundationX.pth": (
        "needs the released Foundation X file; tests/models/test_foundation_x_weights.py loads files written in "
        "its layout from random weights"
    ),
    "xrayfm pretrain multitask foundation_x_paper": "needs the paper's eleven datasets (tests check the recipe "
    "against the adapters: tests/pretrain/test_multitask_shipped_recipes.py)",
    "xrayfm shards build pool_merged520k": "needs ChestX-ray14, CheXpert and MIMIC-CXR-JPG under /data "
    "(tests/cli/test_pool_recipes.py builds the recipe's pool on a phantom)",
    "xrayfm shards inspect /shared/xrayfm": "reads the shards of the command before (not built here)",
    "python -m pytest -q tests/train/test_shard_training.py": "the test suite running itself (part of make test-all)",
    "SHARDS=/shared/xrayfm/shards/merged520k": "a SLURM submission (tests/scripts/test_cluster_scripts.py checks "
    "the script and runs its torchrun sibling with two CPU processes)",
}

#: Artefacts the test makes once (in the shared "world" folder) that a block uses, by block id:
#: they are hard-linked into the block's scratch folder, as an earlier step of the README made them.
NEEDS: dict[str, list[str]] = {
    "python-3": ["demo_output"],
    "models-eva-x-backbones-1": ["eva_x_s_16.pt"],
    "models-eva-x-backbones-2": ["runs/cxr14", "runs/mim_s"],
    "pretrain-your-own-eva-x-1": ["demo_output", "runs/teacher"],
    "pretrain-with-anatomy-adam-1": ["demo_output"],
    "train-one-model-for-many-tasks-foundation-x-1": ["demo_output"],
    "pretrain-your-own-eva-x-3": ["runs/teacher"],
    "fine-tune-on-your-data-1": ["runs/mim_s", "runs/mim"],
    "fine-tune-on-your-data-2": ["runs/mim"],
    "evaluate-1": ["runs/cxr14"],
    "compare-two-models-1": ["runs/cxr14"],
    "explain-1": ["runs/ft", "demo_output"],
    "explain-2": ["runs/ft"],
    "serve-1": ["demo_output"],
    "export-to-onnx-and-serve-with-onnx-runtime-1": ["demo_output", "runs/ft"],
    "export-to-onnx-and-serve-with-onnx-runtime-2": ["runs/ft"],
}

#: Code run before a Python block that continues from earlier text (its names are defined there).
PRELUDES: dict[str, str] = {
    # the user's Adam release file: the MoCo checkpoint layout, written from random weights
    "pretrain-with-anatomy-adam-2": (
        "import torch, torchvision\n"
        "weights = torchvision.models.resnet50().state_dict()\n"
        "torch.save({'state_dict': {f'module.encoder_q.{k}': v for k, v in weights.items() if not k.startswith('fc.')}},"
        " 'checkpoint.pth')\n"
    ),
    "python-2": "from xrayfm.data import build_dataset\n",
    "python-3": "from xrayfm.data import build_dataset, collate_samples\n",
    "explain-2": (
        "import torch\n"
        "from xrayfm.models.task_checkpoint import load_task_model\n"
        "model, meta = load_task_model('runs/ft')\n"
        "images = torch.rand(2, 1, 32, 32)\n"
    ),
    "export-to-onnx-and-serve-with-onnx-runtime-2": (
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from xrayfm.cli import main\n"
        "if not Path('deploy/chest-model').exists():  # made by the block before, unless it ran elsewhere\n"
        "    assert main(['export', 'onnx', 'runs/ft', '--out', 'deploy/chest-model']) == 0\n"
        "images = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)\n"
    ),
}

#: A block that continues from an earlier one: when that one ran in this process, its outputs
#: (paths relative to the scratch folder) are linked in and the prelude is not needed.
REUSES: dict[str, tuple[str, list[str]]] = {
    "export-to-onnx-and-serve-with-onnx-runtime-2": (
        "export-to-onnx-and-serve-with-onnx-runtime-1", ["deploy/chest-model"]),
}  # fmt: skip

#: Blocks that fail today for a bug fixed in this same change (strict: they must fail until it is).
XFAIL: dict[str, str] = {}
