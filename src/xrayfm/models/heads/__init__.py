"""Task heads built from task specs: classification, segmentation (UperNet / U-Net), detection."""

from xrayfm.models.heads.classification import ClassificationHead
from xrayfm.models.heads.detection import DetectionHead
from xrayfm.models.heads.segmentation import SegmentationHead

__all__ = ["ClassificationHead", "DetectionHead", "SegmentationHead"]
