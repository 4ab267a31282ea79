"""The exception types that mean "the user can fix this" (the CLI prints them without a traceback)."""

from __future__ import annotations


def _collect() -> tuple[type[BaseException], ...]:
    from usis.config import ConfigError
    from usis.train.checkpoint import CheckpointError

    types: list[type[BaseException]] = [ConfigError, CheckpointError]
    try:
        from usis.data.datasets import DatasetError

        types.append(DatasetError)
    except ImportError:
        pass
    try:
        from usis.metrics.fid import MetricsError

        types.append(MetricsError)
    except ImportError:
        pass
    try:
        from usis.generate import GenerateError  # also the base of usis.evaluate.EvaluateError

        types.append(GenerateError)
    except ImportError:
        pass
    return tuple(types)



USER_ERRORS = _collect
