"""usis.data."""

from usis.data.check import CheckReport, check_dataset, format_report, preflight, run_check
from usis.data.datasets import DataBundle, DatasetError, build_datasets
from usis.data.unpaired import UnpairedLoaders, make_eval_loader, make_loaders

__all__ = ["CheckReport", "DataBundle", "DatasetError", "UnpairedLoaders", "build_datasets", "check_dataset",
           "format_report", "make_eval_loader", "make_loaders", "preflight", "run_check"]
