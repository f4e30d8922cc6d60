"""Why a model decided: Grad-CAM family maps, attention rollout, overlays, weak localization."""

from xrayfm.explain.gradcam import CAM_METHODS, class_activation_map
from xrayfm.explain.heatmap import HeatmapBatch, compute_heatmap, explain_batch
from xrayfm.explain.overlays import explanation_image, overlay_heatmap
from xrayfm.explain.rollout import attention_maps, attention_rollout, query_attention

__all__ = [
    "CAM_METHODS",
    "HeatmapBatch",
    "attention_maps",
    "attention_rollout",
    "class_activation_map",
    "compute_heatmap",
    "explain_batch",
    "explanation_image",
    "overlay_heatmap",
    "query_attention",
]
