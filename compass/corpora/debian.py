"""``compass data fetch``: real multilingual text from Debian packages, without installing them.

``apt-get download`` fetches the ``.deb`` into ``<data_dir>/corpora/debs`` and it is unpacked
(``dpkg-deb -x``, or a pure-Python ``ar`` + ``tar`` reader when dpkg is absent) under
``<data_dir>/corpora/root``, so nothing touches the system. Every package is recorded in
``<data_dir>/corpora/manifest.json`` with its version, sha256, licence and copyright file, because
the GPL and CC-BY-SA texts in these corpora must travel with any redistribution.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from compass.core.errors import DataError
from compass.core.languages import normalize_language

log = structlog.get_logger(__name__)

# LibreOffice 7.4 help packages in Debian 12 (suffix of ``libreoffice-help-<suffix>``).
LIBREOFFICE_LANGUAGES: dict[str, str] = {
    "ca": "ca", "cs": "cs", "da": "da", "de": "de", "dz": "dz", "el": "el", "en-GB": "en-gb",
    "en": "en-us", "es": "es", "et": "et", "eu": "eu", "fi": "fi", "fr": "fr", "gl": "gl",
    "hi": "hi", "hu": "hu", "id": "id", "it": "it", "ja": "ja", "km": "km", "ko": "ko",
    "nl": "nl", "om": "om", "pl": "pl", "pt": "pt", "pt-BR": "pt-br", "ru": "ru", "sk": "sk",
    "sl": "sl", "sv": "sv", "tr": "tr", "vi": "vi", "zh-CN": "zh-cn", "zh-TW": "zh-tw",
}  # fmt: skip
DEFAULT_FETCH_LANGUAGES = ("de", "fr", "es", "it", "pt-BR", "ja", "ru", "nl", "pl", "id")
LICENCES = {
    "debian-handbook": "GPL-2.0+ or CC-BY-SA-3.0",
    "libreoffice-help": "MPL-2.0 (parts Apache-2.0)",
    "git": "GPL-2.0 (catalogs)",
    "coreutils": "GPL-3.0+",
    "postgresql-15": "PostgreSQL",
    "iso-codes": "LGPL-2.1+",
    "xkb-data": "MIT/X11 (see copyright file)",
}


@dataclass(frozen=True)
class ManifestEntry:
    package: str
    version: str
    deb_file: str
    sha256: str
    licence: str
    copyright_file: str
    fetched_at: str
    origin: str = "Debian archive via apt-get download"


def corpora_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "corpora"


def unpacked_root(data_dir: str | Path) -> Path:
    """Where packages are unpacked (a private ``/``: ``usr/share/...`` lives under it)."""
    return corpora_dir(data_dir) / "root"


def libreoffice_package(language: str) -> str:
    code = normalize_language(language)
    suffix = LIBREOFFICE_LANGUAGES.get(code) or LIBREOFFICE_LANGUAGES.get(code.split("-")[0])
    if suffix is None:
        raise DataError(
            f"no LibreOffice help package for {code}; available: {sorted(LIBREOFFICE_LANGUAGES)}"
        )
    return f"libreoffice-help-{suffix}"


def packages_for(languages: Sequence[str], handbook: bool = True) -> list[str]:
    """Debian packages holding LibreOffice help for ``languages`` (+ English) and the handbook."""
    names = {libreoffice_package("en")}
    names.update(libreoffice_package(language) for language in languages)
    out = sorted(names)
    if handbook:
        out.append("debian-handbook")
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _ar_members(data: bytes) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise DataError("not a Debian package (ar archive expected)")
    members: dict[str, bytes] = {}
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    return members


def extract_deb(deb: Path, target: Path, keep: Callable[[str], bool] | None = None) -> None:
    """Unpack ``deb`` under ``target`` (dpkg-deb when present, else pure Python); with
    ``keep``, only the members whose path (``./usr/...``) it accepts."""
    target.mkdir(parents=True, exist_ok=True)
    if keep is not None:
        _extract_members(deb, target, keep)
        return
    if shutil.which("dpkg-deb"):
        result = subprocess.run(
            ["dpkg-deb", "-x", str(deb), str(target)], capture_output=True, text=True
        )
        if result.returncode == 0:
            return
        log.warning("data.dpkg_failed", deb=deb.name, stderr=result.stderr.strip()[:200])
    members = _ar_members(deb.read_bytes())
    name = next((m for m in members if m.startswith("data.tar")), None)
    if name is None:
        raise DataError(f"{deb.name}: no data.tar member")
    payload = members[name]
    if name.endswith(".xz"):
        payload = lzma.decompress(payload)
    elif name.endswith(".zst"):
        raise DataError(f"{deb.name}: zstd-compressed package needs dpkg-deb")
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as archive:
        archive.extractall(target, filter="data")


def _data_tar(deb: Path) -> bytes:
    """The uncompressed filesystem tar of ``deb``."""
    if shutil.which("dpkg-deb"):
        result = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
        if result.returncode == 0:
            return result.stdout
    members = _ar_members(deb.read_bytes())
    name = next((m for m in members if m.startswith("data.tar")), None)
    if name is None:
        raise DataError(f"{deb.name}: no data.tar member")
    if name.endswith(".zst"):
        raise DataError(f"{deb.name}: zstd-compressed package needs dpkg-deb")
    payload = members[name]
    return lzma.decompress(payload) if name.endswith(".xz") else payload


def _extract_members(deb: Path, target: Path, keep: Callable[[str], bool]) -> None:
    with tarfile.open(fileobj=io.BytesIO(_data_tar(deb)), mode="r:*") as archive:
        wanted = [m for m in archive.getmembers() if m.isfile() and keep(m.name)]
        archive.extractall(target, members=wanted, filter="data")


def _download(package: str, debs: Path) -> Path:
    existing = sorted(debs.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    if shutil.which("apt-get") is None:
        raise DataError(
            "apt-get is not available on this machine, so Debian corpora cannot be fetched; "
            "bring your own JSONL/Parquet records (see docs/method.md) or use the gettext and "
            "chatterbot corpora"
        )
    result = subprocess.run(
        ["apt-get", "download", package], cwd=debs, capture_output=True, text=True, timeout=600
    )
    found = sorted(debs.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DataError(
            f"apt-get download {package} failed ({detail[-1] if detail else 'no output'}); "
            "run 'apt-get update' or check the package name"
        )
    return found[-1]


def read_manifest(data_dir: str | Path) -> dict[str, ManifestEntry]:
    path = corpora_dir(data_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text())
        return {row["package"]: ManifestEntry(**row) for row in rows}
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path} is not a valid corpus manifest: {exc}") from None


def fetch_packages(
    data_dir: str | Path,
    packages: Sequence[str],
    keep: Mapping[str, Callable[[str], bool]] | None = None,
) -> list[ManifestEntry]:
    """Download and unpack ``packages``; idempotent (already fetched packages are skipped).
    ``keep`` maps a package to the filter of the members to unpack (default: all)."""
    base = corpora_dir(data_dir)
    debs = base / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(data_dir)
    root = unpacked_root(data_dir)
    out = []
    for package in packages:
        entry = manifest.get(package)
        if entry is not None and (root / entry.copyright_file).exists():
            out.append(entry)
            continue
        deb = _download(package, debs)
        extract_deb(deb, root, (keep or {}).get(package))
        version = deb.name.split("_")[1].replace("%3a", ":")
        family = "libreoffice-help" if package.startswith("libreoffice-help-") else package
        entry = ManifestEntry(
            package=package,
            version=version,
            deb_file=str(deb.relative_to(base)),
            sha256=_sha256(deb),
            licence=LICENCES.get(family, "see copyright file"),
            copyright_file=f"usr/share/doc/{package}/copyright",
            fetched_at=datetime.now(UTC).isoformat(),
        )
        manifest[package] = entry
        out.append(entry)
        log.info("data.fetched", package=package, version=version)
        (base / "manifest.json").write_text(
            json.dumps([asdict(e) for e in manifest.values()], indent=2, ensure_ascii=False)
        )
    return out
