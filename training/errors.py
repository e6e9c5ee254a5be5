"""Errors of the training package. One base class; each says whether a retry can help."""

from millrace.contracts.errors import EXIT_BAD_INPUT, EXIT_FAILED, MillraceError


class TrainingError(MillraceError):
    """A run refused a model (data, loss, export, INT8 gate): exit 1. Bad input subclasses exit 2."""

    retryable = False
    exit_code = EXIT_FAILED


class ModelSpecError(TrainingError):
    """models.yaml is wrong: the message names the file, the field and the fix."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, file, field: str, problem: str, fix: str = ""):
        super().__init__(f"{file}: {field}: {problem}" + (f" (fix: {fix})" if fix else ""))


class EmptyTrainingSet(TrainingError):
    """No examples (or no positives) fall in the training or holdout period."""


class DivergedTraining(TrainingError):
    """The loss became NaN or infinite."""


class ExportMismatch(TrainingError):
    """The ONNX graph does not reproduce the torch model within tolerance."""


class QuantizationRefused(TrainingError):
    """The INT8 model loses more than the gate allows against FP32."""


class UnknownModel(TrainingError):
    """A model or version is not in models.yaml or in the registry."""

    exit_code = EXIT_BAD_INPUT


class RegistryUnavailable(TrainingError):
    """The MLflow tracking/registry backend cannot be reached."""

    retryable = True


class RecordError(TrainingError):
    """A record file (bundle manifest, lineage) or a bundle file is corrupt, incomplete or of an
    unknown format: the message names the file, the problem and the fix. The signature is the one
    ``contracts.records.Record.corrupt`` calls."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, file, problem: str, fix: str = ""):
        super().__init__(f"{file}: {problem}" + (f" (fix: {fix})" if fix else ""))


class NothingToRollBackTo(TrainingError):
    """A rollback without a target found no earlier champion that passed its gates."""

    exit_code = EXIT_FAILED


class RegistryError(TrainingError):
    """The MLflow store is reachable in principle but cannot be used as configured (bad URI, schema)."""

    exit_code = EXIT_BAD_INPUT
