"""The one small error tree of fedtwin.

Every error a user can cause derives from :class:`FedTwinError`; the CLI maps ``ConfigError``
and ``IngestError`` to exit code 2 (bad input) with a one-line message, anything else under
``FedTwinError`` to exit code 1. Messages never contain patient data.
"""


class FedTwinError(Exception):
    """Base class of every error fedtwin raises on purpose."""


class ConfigError(FedTwinError):
    """A configuration value, flag or policy document is invalid."""


class IngestError(FedTwinError):
    """An input data file or record cannot be read or is invalid."""


class ConsentDenied(FedTwinError):
    """A site refused a run or a round under its policy or its patients' consents."""


class BudgetExhausted(FedTwinError):
    """A planned privacy spend would exceed the site's cap; nothing was spent."""


class VerificationError(FedTwinError):
    """A log, proof, signature or model file failed verification."""


class FederationError(FedTwinError):
    """A federated run failed (no usable replies, a site error, a broken run directory)."""
