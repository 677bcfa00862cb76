"""Exception types shared by every part; each subclasses a built-in so callers may catch either."""


class L1ForgeError(Exception):
    """Base of every error l1forge raises on purpose; the CLI prints these without a traceback."""


class ConfigError(L1ForgeError, ValueError):
    """A configuration key or value is invalid; the message names the key and the reason."""


class DataFormatError(L1ForgeError, ValueError):
    """A file or message does not follow its documented format."""


class MissingToolError(L1ForgeError, RuntimeError):
    """An external tool (simulator, synthesizer) is missing; the message says how to install it."""


class UnsupportedModelError(L1ForgeError, ValueError):
    """A model cannot be imported: the message names the layer, its type and what is supported."""


class BitExactnessError(L1ForgeError, AssertionError):
    """Two implementations that must agree bit for bit (emulator, C-sim, RTL) do not."""
