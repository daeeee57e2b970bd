"""COMPASS: continual multilingual PEFT with adaptive semantic sampling."""

# The one place the version is written: setuptools reads it for the distribution's metadata
# (pyproject.toml, ``dynamic = ["version"]``), ``compass --version`` prints it.
__version__ = "0.1.0"
