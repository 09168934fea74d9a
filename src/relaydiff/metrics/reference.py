"""Reference statistics files (``.npz``): relaydiff's own and ADM's reference batches.

relaydiff's file (written by ``relaydiff eval ref``), all arrays, no pickles:
``mu``/``sigma`` (pool_3 mean, covariance), ``mu_s``/``sigma_s`` (sFID features), ``pr_features``
(up to 10 000 pool_3 vectors for precision/recall), ``swd_<level>`` (float16 SWD descriptors),
``spectrum`` (radial power profile) and ``meta`` (a JSON string: ``n_images``, ``resolution``,
``fingerprint`` — SHA-256 of the pixels —, ``weights_sha256`` of the Inception, version).
The key names of the Gaussian statistics are ADM's, so each program can read the other's.

ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz`` …) hold ``mu``, ``sigma``, ``mu_s``,
``sigma_s`` computed by TensorFlow from the same Inception graph, and the reference images in
``arr_0``, from which precision/recall features, SWD and spectra are computed when asked for.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io.files import atomic_writer, dumps_json
from ..version import __version__
from .fid import gaussian_stats
from .image_sets import ARRAY_KEY, npy_header

FORMAT = "relaydiff-reference-v1"
PR_FEATURES = 10000  # pool features kept for precision/recall and KID
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # the starts np.load reads as an .npz archive


@dataclass
class Reference:
    """Statistics of a reference set; any field may be ``None`` if the file lacks it."""

    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    pr_features: np.ndarray | None = None
    swd: list[torch.Tensor] | None = None
    spectrum: torch.Tensor | None = None
    n_images: int | None = None
    resolution: tuple[int, int] | None = None
    fingerprint: str | None = None
    weights_sha256: str | None = None
    kind: str = "relaydiff"
    path: Path | None = None
    has_images: bool = False
    fields: dict[str, str] = field(default_factory=dict)  # statistic → the file's field(s)

    def save(self, path: str | Path) -> None:
        """Write the ``.npz`` atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        for key in ("mu", "sigma", "mu_s", "sigma_s", "pr_features"):
            if getattr(self, key) is not None:
                arrays[key] = np.asarray(getattr(self, key))
        for level, desc in enumerate(self.swd or []):
            arrays[f"swd_{level}"] = desc.to(torch.float16).numpy()
        if self.spectrum is not None:
            arrays["spectrum"] = self.spectrum.numpy()
        meta = {"format": FORMAT, "n_images": self.n_images, "resolution": self.resolution,
                "fingerprint": self.fingerprint, "weights_sha256": self.weights_sha256,
                "relaydiff_version": __version__}
        arrays["meta"] = np.array(dumps_json(meta, indent=None))
        with atomic_writer(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """Read a relaydiff reference file or an ADM reference batch (plain arrays only: a file
        holding pickled objects is refused, never unpickled)."""
        path = Path(path)
        arrays, has_images = _plain_arrays(path)
        ref = cls(path=path, has_images=has_images)
        keys = set(arrays) | ({ARRAY_KEY} if has_images else set())
        for key in ("mu", "sigma", "mu_s", "sigma_s", "pr_features"):
            if key in keys:
                setattr(ref, key, arrays[key].astype(np.float64))
                ref.fields[key] = key
        levels = sorted((k for k in keys if k.startswith("swd_")), key=lambda k: int(k[4:]))
        ref.swd = [torch.from_numpy(arrays[k]) for k in levels] or None
        if ref.swd:
            ref.fields["swd"] = "swd_*"
        if "spectrum" in keys:
            ref.spectrum = torch.from_numpy(arrays["spectrum"])
            ref.fields["spectrum"] = "spectrum"
        if "meta" in keys:
            try:
                meta = json.loads(str(arrays["meta"]))
                fmt = meta.get("format")
                if fmt == FORMAT:
                    ref.n_images = meta["n_images"]
                    ref.resolution = tuple(meta["resolution"]) if meta["resolution"] else None
                    ref.fingerprint = meta["fingerprint"]
                    ref.weights_sha256 = meta["weights_sha256"]
            except (ValueError, TypeError, KeyError, AttributeError):
                raise InvalidReferenceError(path, "its 'meta' field is not relaydiff's JSON "
                                                   "record") from None
            if fmt != FORMAT:
                raise ValueError(f"{path}: unknown reference format {fmt!r}; expected {FORMAT}")
        elif {"feat", "s_feat"} <= keys:  # RDM's activation files (evaluate.py activations)
            ref.kind = "rdm-activations"
            feat, s_feat = arrays["feat"].astype(np.float64), arrays["s_feat"].astype(np.float64)
            ref.mu, ref.sigma = gaussian_stats(feat)
            ref.mu_s, ref.sigma_s = gaussian_stats(s_feat)
            keep = np.random.default_rng(0).permutation(len(feat))[:PR_FEATURES]
            ref.pr_features = feat[np.sort(keep)].astype(np.float32)
            ref.n_images = len(feat)
            ref.fields.update(mu="feat", sigma="feat", mu_s="s_feat", sigma_s="s_feat",
                              pr_features="feat")
        elif has_images or ref.mu_s is not None:  # ADM's reference batches
            ref.kind = "adm"
            if has_images:
                ref.fields["images"] = ARRAY_KEY
        elif ref.mu is not None and ref.sigma is not None:
            ref.kind = "edm-fid-refs"  # EDM's fid-refs/*.npz: mu and sigma only
        else:
            raise ValueError(f"{path}: not a reference file relaydiff knows: expected "
                             "relaydiff's (meta), ADM's (arr_0, mu, sigma), EDM's fid-refs "
                             "(mu, sigma) or RDM's activations (feat, s_feat); it has "
                             f"{', '.join(sorted(keys)) or 'no arrays'}")
        return ref

    def check_weights(self, weights_sha256: str) -> None:
        """Refuse statistics computed with other Inception weights than ``weights_sha256``."""
        if self.weights_sha256 is not None and self.weights_sha256 != weights_sha256:
            raise ValueError(f"{self.path}: reference computed with Inception weights "
                             f"{self.weights_sha256[:12]}…, but the loaded weights are "
                             f"{weights_sha256[:12]}…; recompute it with `relaydiff eval ref` or "
                             "pass the matching Inception weights")


class InvalidReferenceError(ValueError):
    """A file that is not a valid reference statistics ``.npz``: one line naming it, the reason
    and how to make a valid one."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: not a readable .npz reference file ({reason}); "
                         f"rebuild it with `relaydiff eval ref DATASET --out {path}` (or pass the "
                         "dataset folder as --ref)")


def _plain_arrays(path: Path) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays of the ``.npz`` at ``path`` except the images (``arr_0``, streamed later by
    :class:`ImageSet`), and whether it has them.

    Every member's header is read before any data: an archive with object arrays (pickles) is
    refused, so NumPy is never asked to unpickle; so is anything that is not a zip archive
    (which ``np.load`` would try to unpickle)."""
    with open(path, "rb") as f:
        if f.read(4) not in _ZIP_MAGIC:
            raise InvalidReferenceError(path, "not an .npz archive: damaged, truncated, or "
                                              "another format such as a pickle")
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = []
            for member in archive.namelist():
                with archive.open(member) as f:
                    if npy_header(f)[2].hasobject:
                        pickled.append(member.removesuffix(".npy"))
        if not pickled:
            with np.load(path, allow_pickle=False) as data:
                return ({key: data[key] for key in data.files if key != ARRAY_KEY},
                        ARRAY_KEY in data.files)
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise InvalidReferenceError(path, f"damaged or truncated: {e}") from None
    raise InvalidReferenceError(path, f"it holds pickled Python objects in {', '.join(pickled)}: "
                                      "not valid statistics, and unsafe to load")
