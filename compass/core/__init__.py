"""The pure core of COMPASS: what the loop computes, with no I/O.

Events and their contracts, language tags, errors, the semantic map, gap scores, event-time
windows, drift detectors, samplers, the promotion gate and text records. Modules here import
numpy, scipy and pydantic only (enforced by import-linter contracts in ``pyproject.toml``).
"""
