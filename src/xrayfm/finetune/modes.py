"""Fine-tuning modes: full, linear probe (frozen backbone) and LoRA (PEFT).

``apply_mode`` freezes or wraps the model in place and reports how many parameters train, so
every run states its trainable-parameter count and share. LoRA adapters come from PEFT
(``peft.LoraConfig`` / ``inject_adapter_in_model``) on the backbone only; the heads (and a
segmentation decoder) are trained in full. :func:`merge_lora` folds the adapters back into
plain weights for export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.task_model import XrayModel

MODES = ("full", "linear", "lora")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters.

    Attributes:
        rank: Adapter rank r.
        alpha: Scaling numerator (update scaled by alpha / r).
        dropout: Dropout on the adapter input.
        target_modules: Regex of backbone module names to adapt (matched in full by PEFT);
            default: attention projections of a ViT (``qkv`` / ``q_proj`` / ``v_proj``) or the
            3x3 convolutions of a ResNet.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: str | None = None


def default_lora_targets(backbone: nn.Module) -> str:
    """A LoRA target regex suited to the backbone's layer names."""
    names = [n for n, _ in backbone.named_modules()]
    if any(re.search(r"attn\.(qkv|q_proj|v_proj)$", n) for n in names):
        return r".*attn\.(qkv|q_proj|v_proj)"
    if any(re.search(r"\.attn\.qkv$", n) for n in names):
        return r".*\.attn\.qkv"
    if any(re.search(r"layer\d\.\d+\.conv2$", n) for n in names):
        return r".*layer\d\.\d+\.conv2"
    raise XrayfmError(
        f"no default LoRA targets for {type(backbone).__name__}; set target_modules to a regex of its module names"
    )


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts and the trainable share in percent."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(1, total)}


def apply_mode(model: XrayModel, mode: str, lora: LoraSettings | None = None) -> dict[str, float]:
    """Set which parameters of ``model`` train; returns :func:`count_parameters`.

    Raises:
        XrayfmError: Unknown mode or LoRA targets matching nothing.
    """
    if mode not in MODES:
        raise XrayfmError(f"unknown fine-tuning mode {mode!r}; expected one of {MODES}")
    for p in model.parameters():
        p.requires_grad = True
    if mode in ("linear", "lora"):
        for p in model.backbone.parameters():
            p.requires_grad = False
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = lora or LoraSettings()
        targets = lora.target_modules or default_lora_targets(model.backbone)
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
        try:
            inject_adapter_in_model(config, model.backbone)
        except ValueError as exc:
            raise XrayfmError(f"LoRA target_modules {targets!r}: {exc}") from None
        for module in model.backbone.modules():
            # timm's EVA attention with q/v biases calls F.linear(x, qkv.weight) directly, which
            # would bypass the adapter; the separate-bias path calls qkv(x) (same result, LoRA on)
            if getattr(module, "q_bias", None) is not None and hasattr(module, "qkv_bias_separate"):
                module.qkv_bias_separate = True
        for name, p in model.backbone.named_parameters():
            p.requires_grad = "lora_" in name
    model.finetune_mode = mode
    return count_parameters(model)


def merge_lora(model: XrayModel) -> XrayModel:
    """Fold LoRA adapters into the backbone's weights (plain modules again); no-op without LoRA."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.backbone.get_submodule(parent_name) if parent_name else model.backbone
            setattr(parent, child, module.get_base_layer())
    return model
