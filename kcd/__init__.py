"""kcd: the KyleCode daemon."""

__version__ = "0.1.0"
API_VERSION = "1"
MIN_API_VERSION = "1"
