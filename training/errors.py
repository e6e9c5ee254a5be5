"""Errors of the training package. One base class; each says whether a retry can help."""

from millrace.contracts.errors import MillraceError


class TrainingError(MillraceError):
    retryable = False


class ModelSpecError(TrainingError):
    """models.yaml is wrong: the message names the file, the field and the fix."""

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


class RegistryUnavailable(TrainingError):
    """The MLflow tracking/registry backend cannot be reached."""

    retryable = True
