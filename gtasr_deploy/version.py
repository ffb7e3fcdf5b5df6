"""The package version (a leaf module: export and cache keys read it without importing the API)."""

__version__ = "0.1.0"
