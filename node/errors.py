"""The node's exceptions: one root, each carrying what a user needs to fix the problem."""


class CxrNodeError(Exception):
    """Root of every error the node raises on purpose."""


class ConfigError(CxrNodeError):
    """A setting is missing or malformed; the message names the setting and its source."""
