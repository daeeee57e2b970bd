"""Text records and the loaders that turn real multilingual corpora into them."""

from compass.data.records import TextRecord, read_records, stable_id, write_records

__all__ = ["TextRecord", "read_records", "stable_id", "write_records"]
