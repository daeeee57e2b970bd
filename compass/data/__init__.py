"""Text records and the loaders that turn real multilingual corpora into them."""

from compass.data.chatterbot import load_chatterbot
from compass.data.corpora import CORPORA, load_corpus
from compass.data.debian import fetch_packages, packages_for, read_manifest, unpacked_root
from compass.data.gettext_catalogs import load_gettext
from compass.data.handbook import load_debian_handbook
from compass.data.libreoffice import load_libreoffice_help
from compass.data.records import TextRecord, read_records, stable_id, write_records

__all__ = [
    "CORPORA",
    "TextRecord",
    "fetch_packages",
    "load_chatterbot",
    "load_corpus",
    "load_debian_handbook",
    "load_gettext",
    "load_libreoffice_help",
    "packages_for",
    "read_manifest",
    "read_records",
    "stable_id",
    "unpacked_root",
    "write_records",
]
