"""kuva: a national medical image archive."""

__version__ = "0.1.0"
