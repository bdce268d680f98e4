"""The one error type of checkpoint loading and export."""


class CheckpointError(ValueError):
    """A checkpoint source is missing, corrupt, truncated, or does not match its config.

    The message always names the file (or source) and the problem, e.g. the tensor and its expected vs actual
    shape, so a researcher can fix the checkpoint without a debugger.
    """
