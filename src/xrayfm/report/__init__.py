"""Pictures of data and results that people look at (contact sheets; later ROC curves, overlays)."""

from xrayfm.report.contact_sheet import contact_sheet

__all__ = ["contact_sheet"]
