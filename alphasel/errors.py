"""Project errors. Each names the offending input and the fix; the CLI prints one line, exit 2."""


class AlphaselError(ValueError):
    """Base class for every error alphasel raises about its input."""


class SourceError(AlphaselError):
    """A model source (hub id, path, file) cannot be found or read."""


class AnalysisOptionError(AlphaselError):
    """An analysis option (estimator, device, downsampling, filters) is invalid."""


class TableError(AlphaselError):
    """An alpha table is missing, empty or lacks required columns."""


class PlanError(AlphaselError):
    """A plan cannot be made or applied (bad scheme, k, kinds, budget, mismatched model)."""


class BudgetError(PlanError):
    """No choice meets a trainable-parameter budget within the tolerance; ``closest`` is the
    nearest total found."""

    def __init__(self, message: str, closest: int) -> None:
        super().__init__(message)
        self.closest = closest


class PlotError(AlphaselError):
    """A figure cannot be drawn from the given table(s) or options."""


class DataError(AlphaselError):
    """Training data cannot be found, read, parsed or split (names the file and line)."""


class TrainConfigError(AlphaselError):
    """Training options are invalid or contradict each other (all problems at once)."""


class RunError(AlphaselError):
    """A run directory cannot be written, resumed or read (holds a run, incomplete, corrupt)."""


class StudyError(AlphaselError):
    """A study cannot be specified, planned, run or read (bad scheme option, budget, directory)."""
