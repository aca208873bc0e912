"""Export backends: each turns a resolved model into a verified artifact plus golden data in `model/`."""

from generator.export.common import ExportResult

__all__ = ["ExportResult"]
