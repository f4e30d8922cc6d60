"""Pictures of data and results that people look at: contact sheets and the evaluation report.

Reports render what they are given; they import nothing from :mod:`xrayfm.evaluate`, which calls
them (evaluate -> report).
"""

from xrayfm.report.contact_sheet import contact_sheet

__all__ = ["contact_sheet"]
