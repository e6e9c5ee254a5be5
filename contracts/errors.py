"""Errors raised while reading declarations. One base class; none of them is retryable."""


class ContractError(Exception):
    """A project file or contract is wrong. The message names the file, the field and the fix."""

    retryable = False

    def __init__(self, file: str, field: str, problem: str, fix: str = ""):
        self.file, self.field, self.problem, self.fix = str(file), field, problem, fix
        message = f"{self.file}: {field}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)
