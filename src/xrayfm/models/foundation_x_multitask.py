"""Foundation X's whole model into xrayfm's :class:`~xrayfm.pretrain.multitask_model.MultiTaskModel`, as far as
the architectures correspond.

A Foundation X checkpoint (:mod:`~xrayfm.models.foundation_x_weights`) holds, besides its Swin-B, 11
classification heads, a PSP + FPN segmentation decoder and a DINO localizer. :func:`load_foundation_x` loads
the Swin strictly, the classification heads the model has a task for (:data:`CLASSIFICATION_HEADS`) and the
deformable encoder when it fits, and returns a :class:`LoadReport` of what was loaded and what was left out,
and why (:data:`LEFT_OUT`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from xrayfm.models.foundation_x_weights import BACKBONE_PREFIX, NOT_SWIN, check_swin, read_foundation_x, swin_state
from xrayfm.tasks import CLASSIFICATION_KINDS

#: Checkpoint classification head -> xrayfm dataset (``dataset`` or ``dataset/task``), the reference's
#: code order (main.py; not the paper's C1-C11 numbering, where C1 = head 6).
CLASSIFICATION_HEADS: dict[int, str] = {
    0: "tbx11k", 1: "node21", 2: "candid_ptx", 3: "rsna_pneumonia", 4: "chestx_det", 5: "siim_acr",
    6: "chexpert", 7: "nih_cxr14", 8: "vindr_cxr", 9: "shenzhen", 10: "mimic_cxr",
}  # fmt: skip
HEAD_PREFIX = f"{BACKBONE_PREFIX}classification_heads."
#: DINO deformable encoder layer -> transformers' ``DeformableDetrEncoderLayer`` (same post-norm layer).
ENCODER_RENAMES = {"norm1.": "self_attn_layer_norm.", "linear1.": "mlp.fc1.", "linear2.": "mlp.fc2.",
                   "norm2.": "final_layer_norm."}  # fmt: skip
ENCODER_NOTE = (
    "the encoder layers are the same computation, but their input is not Foundation X's: xrayfm feeds the Swin "
    "stages to input_proj without Locnorm1-3 and uses sine positions with temperature 10000 and a 0.5 offset "
    "(DINO: temperature 20); input_proj and level_embed were never trained by Foundation X (not in its optimizer). "
    "Fine-tune before relying on it"
)
#: Checkpoint parts without an xrayfm counterpart: (name pattern, part, reason).
LEFT_OUT: tuple[tuple[str, str, str], ...] = (
    (r"backbone\.0\.Locnorm", "backbone.0.Locnorm1-3", "xrayfm's localizer reads the Swin stages without them"),
    (r"backbone\.0\.Segnorm", "backbone.0.Segnorm0-3", "unused by Foundation X too (commented out)"),
    (r"backbone\.0\.head\.", "backbone.0.head", "the ImageNet / Ark classifier, unused"),
    (r"backbone\.0\.segmentation_", "backbone.0.segmentation_*",
     "PSP (bins 1, 2, 4, 6) + FPN decoder and its heads: xrayfm's shared decoder is smp's UperNet (bins 1, 2, 3, 6, "
     "LayerNorms on the inputs) or U-Net, another architecture"),
    (r"(transformer\.(decoder|tgt_embed|enc_out)|label_enc|class_embed|bbox_embed)", "DINO decoders and heads",
     "two-stage query selection, denoising and a per-dataset memory projection: xrayfm's DeformableDetrHead is "
     "single-stage with learned queries"),
)  # fmt: skip


@dataclass(frozen=True)
class Part:
    """One group of checkpoint tensors and where it went.

    Attributes:
        source: The tensors' name or prefix in the checkpoint.
        tensors: How many.
        target: Their prefix in the model; empty when left out.
        note: Why left out, or a caveat of a loaded part.
    """

    source: str
    tensors: int
    target: str = ""
    note: str = ""


@dataclass
class LoadReport:
    """What :func:`load_foundation_x` loaded into a multi-task model and what it left out.

    Attributes:
        source: The file.
        entry: The checkpoint entry read (``teacher_model``, ``model``...).
        loaded: Parts loaded.
        skipped: Checkpoint parts left out, each with its reason.
        untouched: Model modules that kept their own weights (no counterpart in the file).
    """

    source: str
    entry: str
    loaded: list[Part] = field(default_factory=list)
    skipped: list[Part] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as text lines, for a CLI to print."""
        out = [f"{self.source} [{self.entry}]"]
        out += [
            f"loaded   {p.source} ({p.tensors}) -> {p.target}" + (f": {p.note}" if p.note else "") for p in self.loaded
        ]
        out += [f"skipped  {p.source} ({p.tensors}): {p.note}" for p in self.skipped]
        out += [f"kept own {name}" for name in self.untouched]
        return out


def load_foundation_x(
    model: nn.Module,
    path: str | Path,
    *,
    teacher: bool = True,
    heads: Mapping[int, str] | None = None,
    allow_unsafe: bool = False,
) -> LoadReport:
    """Load a Foundation X checkpoint into a multi-task model as far as the architectures correspond.

    Loaded: the Swin (strictly, final ``norm`` included); classification head ``i`` into the head of
    ``heads[i]`` when the model has it with the same shape; the DINO deformable encoder's layers,
    ``input_proj`` and ``level_embed`` into the model's Deformable DETR encoder when every tensor
    fits (see :data:`ENCODER_NOTE`). Everything else is listed in the report with its reason.

    Args:
        model: A :class:`~xrayfm.pretrain.multitask_model.MultiTaskModel` on a timm Swin with
            ``always_partition=True``.
        path: The checkpoint.
        teacher: The EMA teacher's weights (default) or the student's.
        heads: Checkpoint head index -> ``dataset`` (its only classification task) or ``dataset/task``
            (default :data:`CLASSIFICATION_HEADS`).
        allow_unsafe: Permit unpickling a trusted file that is not weights-only.

    Returns:
        The report (model weights are changed in place).

    Raises:
        XrayfmError: Unreadable file, another layout, a backbone that is not such a Swin, or a Swin that does not fit.
    """
    source = str(path)
    check_swin(model.backbone, source)
    state, entry = read_foundation_x(path, teacher=teacher, allow_unsafe=allow_unsafe)
    report = LoadReport(source, entry)
    target = {f"backbone.{k}": v for k, v in swin_state(state, model.backbone, source=source).items()}
    used = {k for k in state if k.startswith(BACKBONE_PREFIX) and not k[len(BACKBONE_PREFIX) :].startswith(NOT_SWIN)}
    report.loaded.append(Part("backbone.0 (Swin, final norm)", len(target), "backbone"))
    _heads(model, state, dict(CLASSIFICATION_HEADS if heads is None else heads), target, used, report)
    _encoder(model, state, target, used, report)
    for pattern, part, reason in LEFT_OUT:
        keys = [k for k in state if k not in used and re.match(pattern, k)]
        used.update(keys)
        if keys:
            report.skipped.append(Part(part, len(keys), note=reason))
    rest = [k for k in state if k not in used]
    report.skipped += [Part(name, n, note="no counterpart in xrayfm's multi-task model") for name, n in _groups(rest)]
    model.load_state_dict(target, strict=False)
    report.untouched = [name for name, _ in _groups(k for k in model.state_dict() if k not in target)]
    return report


def _heads(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    heads: dict[int, str],
    target: dict,
    used: set,
    report: LoadReport,
) -> None:
    """Map the checkpoint's classification heads onto the model's (shapes checked; mismatches reported)."""
    found = sorted({int(k[len(HEAD_PREFIX) :].split(".")[0]) for k in state if k.startswith(HEAD_PREFIX)})
    mine = model.state_dict()
    for index in found:
        prefix = f"{HEAD_PREFIX}{index}."
        weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        used.update(prefix + k for k in weights)
        unit = _unit(model, heads.get(index))
        if index not in heads or unit is None:
            why = (
                "not in the head mapping" if index not in heads else f"the model has no classifier for {heads[index]!r}"
            )
            report.skipped.append(Part(prefix[:-1], len(weights), note=why))
            continue
        dataset, name = unit.split("/")
        own = {f"heads.{dataset}.{name}.fc.{k}": v for k, v in weights.items()}
        bad = [f"{k} {tuple(v.shape)} vs {tuple(mine[k].shape)}" if k in mine else f"{k} absent" for k, v in own.items()
               if k not in mine or mine[k].shape != v.shape]  # fmt: skip
        if bad:
            report.skipped.append(
                Part(prefix[:-1], len(weights), note=f"does not fit {unit} ({bad[0]}): another class list?")
            )
            continue
        target.update(own)
        report.loaded.append(Part(prefix[:-1], len(weights), f"heads.{dataset}.{name}"))


def _unit(model: nn.Module, name: str | None) -> str | None:
    """The classification ``dataset/task`` key a mapping value names: itself, or a dataset's only classifier."""
    if name is None:
        return None
    units = [u for u, spec in model.tasks.items() if spec.kind in CLASSIFICATION_KINDS and name in (u, u.split("/")[0])]
    return units[0] if len(units) == 1 else None


def _encoder(model: nn.Module, state: Mapping[str, torch.Tensor], target: dict, used: set, report: LoadReport) -> None:
    """Map DINO's shared deformable encoder, ``input_proj`` and ``level_embed`` onto the model's, all or nothing."""
    keys = [k for k in state if k.startswith(("transformer.encoder.", "input_proj.")) or k == "transformer.level_embed"]
    if not keys:
        return
    used.update(keys)
    part = "transformer.encoder, input_proj, level_embed"
    encoder = getattr(model, "loc_encoder", None)
    if encoder is None:
        report.skipped.append(
            Part(part, len(keys), note="the model has no Deformable DETR encoder (no detection task)")
        )
        return
    mapped = {}
    for k in keys:
        name = k.removeprefix("transformer.")
        if name.startswith("encoder.layers."):
            index, rest = name.removeprefix("encoder.layers.").split(".", 1)
            rest = next((new + rest[len(old) :] for old, new in ENCODER_RENAMES.items() if rest.startswith(old)), rest)
            name = f"encoder.layers.{index}.{rest}"
        mapped[f"loc_encoder.{name}"] = state[k]
    mine = {f"loc_encoder.{k}": v for k, v in encoder.state_dict().items()}
    missing = [k for k in mine if k not in mapped]
    bad = [k for k, v in mapped.items() if k not in mine or mine[k].shape != v.shape]
    if missing or bad:
        why = f"does not fit the model's encoder (other sizes?): {len(bad)} extra or of another shape {bad[:2]}, "
        report.skipped.append(Part(part, len(keys), note=why + f"{len(missing)} missing {missing[:2]}"))
        return
    target.update(mapped)
    report.loaded.append(Part(part, len(keys), "loc_encoder", ENCODER_NOTE))


def _groups(keys: Iterable[str]) -> list[tuple[str, int]]:
    """Names grouped by their first two parts (``heads.nih``, ``transformer.foo``) with counts, in order."""
    groups: dict[str, int] = {}
    for k in keys:
        group = ".".join(k.split(".")[:2])
        groups[group] = groups.get(group, 0) + 1
    return list(groups.items())
