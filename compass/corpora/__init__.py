"""Real multilingual corpora and the loaders that turn them into text records."""

from compass.core.records import TextRecord, read_records, stable_id, write_records
from compass.corpora.catalog import CORPORA, load_corpus
from compass.corpora.chatterbot import load_chatterbot
from compass.corpora.debian import fetch_packages, packages_for, read_manifest, unpacked_root
from compass.corpora.gettext_catalogs import load_gettext
from compass.corpora.handbook import load_debian_handbook
from compass.corpora.libreoffice import load_libreoffice_help

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
