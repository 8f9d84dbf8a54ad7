"""Errors the engine raises for bad input: each message says what to fix."""


class LungLensError(Exception):
    """Base class of every error the engine raises on purpose."""


class DataError(LungLensError):
    """A dataset, image, mask or manifest that cannot be used as given."""


class ConfigError(LungLensError):
    """A run configuration or option that is invalid."""


class WeightsError(LungLensError):
    """Pretrained weights that cannot be found or loaded."""


class StoreError(LungLensError):
    """The cache folder cannot be written or read (read-only, full disk, permissions)."""


class DamagedRunError(LungLensError):
    """A stored run whose files are missing, truncated or altered since it was written; it is never served."""


class Cancelled(LungLensError):
    """The caller asked a long computation to stop; nothing partial was cached."""
