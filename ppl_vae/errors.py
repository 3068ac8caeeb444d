"""Errors that describe a problem with what the user asked for.

Every error here is caught by the command line and printed as one line, ``error: ...``,
followed by a non-zero exit. Their messages say what is wrong and what to do.
"""


class PplVaeError(Exception):
    """Base class: a problem with the user's input, config, data or files."""


class DataError(PplVaeError, ValueError):
    """Data that cannot be used as given (bad values, shape, missing files)."""


class ConfigError(PplVaeError, ValueError):
    """An unknown part name, a bad option or an inconsistent configuration."""


class CheckpointError(PplVaeError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class DeviceError(PplVaeError, RuntimeError):
    """A device was requested that this machine or this torch build does not have."""


class NotFittedError(PplVaeError, AttributeError):
    """An estimator was used before ``fit``."""


class TrainingDiverged(PplVaeError, FloatingPointError):
    """The loss became NaN or infinite; ``step`` is the first such step (None if unknown)."""

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step
