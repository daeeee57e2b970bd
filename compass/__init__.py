"""COMPASS: continual multilingual PEFT with adaptive semantic sampling."""

__version__ = "0.1.0"
