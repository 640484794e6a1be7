"""The exceptions rtml raises: one root, a small subclass per area.

Library code raises these; only the CLI edge turns them into `Error: ...` messages.
Every message says what went wrong and, where it can, what to do about it.
"""


class RtmlError(Exception):
    """Root of every error rtml reports to the user without a traceback."""


class ConfigError(RtmlError):
    """A bad option value, or a bad `rtml.toml`."""


class SymbolError(RtmlError):
    """A symbol name that cannot be used as a log partition."""


class LogError(RtmlError):
    """The Parquet log is unreadable, locked by another writer, or inconsistent."""


class LockedError(LogError):
    """Another live process holds the writer lock."""


class FeatureError(RtmlError):
    """A feature query that breaks the contract, or a features state that does not match the logs."""


class InputFormatError(RtmlError):
    """A file handed to replay is not a trade file of the expected format."""


class SourceError(RtmlError):
    """A tick source failed in a way that retrying will not fix."""
