"""Adience (and CSV) data: fold parsing, subject-exclusive splits, the face cache, DataModules.

The DataModules are imported lazily, so that the light tools of this package (fold summary,
demo generator, preprocessing workers) do not pay for importing Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agegender.data.csv import CsvDataModule
    from agegender.data.datamodule import AdienceDataModule

__all__ = ["AdienceDataModule", "CsvDataModule"]


def __getattr__(name: str) -> Any:
    if name == "AdienceDataModule":
        # deferred: Lightning and torch (~5 s), not needed by `import agegender.data.folds`
        from agegender.data.datamodule import AdienceDataModule

        return AdienceDataModule
    if name == "CsvDataModule":
        # deferred: Lightning and torch, as above
        from agegender.data.csv import CsvDataModule

        return CsvDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
