"""Exception types raised by `cdc` for problems a user can fix."""


class CdcError(Exception):
    """Base class for every error `cdc` raises on purpose."""


class ParamsError(CdcError):
    """A params file or notebook parameter is malformed, misspelt or of the wrong type."""


class NaNLossError(CdcError):
    """Training produced a non-finite loss."""


class LoraError(CdcError):
    """A LoRA file is unreadable or was made for another model."""
