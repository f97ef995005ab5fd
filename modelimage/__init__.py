"""modelimage: pack model weights into deterministic, size-bounded OCI images."""

__version__ = "0.1.0"
