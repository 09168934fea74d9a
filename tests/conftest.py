"""Reference constructions shared by the core-math tests.

Everything here is written from the equations of docs/method.md with numpy/scipy and explicit
matrices, never by calling ``relaydiff``, so the tests compare the package against an
independent computation. Helpers are exposed through the ``ref`` fixture.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import scipy.fft
import torch


def dct_matrix(p: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: column j is scipy's ortho DCT of the j-th basis vector."""
    return scipy.fft.dct(np.eye(p), type=2, norm="ortho", axis=0)


def attenuation(p: int, b: float, m: float) -> np.ndarray:
    """``a_b(i,j) = (1−m)·exp(−(ω_i²+ω_j²)·b²/2) + m``, ``ω_i = π·i/p``."""
    w = np.pi * np.arange(p) / p
    return (1 - m) * np.exp(-(w[:, None] ** 2 + w[None, :] ** 2) * b**2 / 2) + m


def patch_dct_operator(c: int, h: int, w: int, p: int) -> np.ndarray:
    """``d×d`` matrix of the patch DCT on row-major flattened ``C×H×W`` images (Kronecker form)."""
    m = dct_matrix(p)
    rows = np.kron(np.eye(h // p), m)
    cols = np.kron(np.eye(w // p), m)
    return np.kron(np.eye(c), np.kron(rows, cols))


def blur_operator(c: int, h: int, w: int, p: int, b: float, m: float) -> np.ndarray:
    """``Blur(·, b)`` as a matrix: ``Tᵀ diag(a_b tiled over patches) T``."""
    t = patch_dct_operator(c, h, w, p)
    a = np.tile(attenuation(p, b, m), (c, h // p, w // p)).reshape(-1)
    return t.T @ (a[:, None] * t)


def _pixel_grid(c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ch, r, col = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    return ch.reshape(-1), r.reshape(-1), col.reshape(-1)


def same_block(c: int, h: int, w: int, s: int) -> np.ndarray:
    """Indicator ``S[i, j] = 1`` when pixels i and j lie in the same channel and ``s×s`` block."""
    ch, r, col = _pixel_grid(c, h, w)
    key = (ch * (h // s) + r // s) * (w // s) + col // s
    return (key[:, None] == key[None, :]).astype(float)


def box_matrix(c: int, h: int, w: int, s: int) -> np.ndarray:
    """Circular box filter ``K``: ``(K g)[r, c] = (1/s)·Σ_{dx,dy<s} g[r−dx, c−dy]`` (indices mod H, W)."""
    ch, r, col = _pixel_grid(c, h, w)
    d = ch.size
    k = np.zeros((d, d))
    index = {(a, b, e): i for i, (a, b, e) in enumerate(zip(ch, r, col, strict=True))}
    for i in range(d):
        for dx in range(s):
            for dy in range(s):
                k[i, index[(ch[i], (r[i] - dx) % h, (col[i] - dy) % w)]] += 1.0 / s
    return k


def noise_cov(c: int, h: int, w: int, s: int, alpha: float, variant: str) -> np.ndarray:
    """Covariance of the relay noise ``n``: the paper's (``"trapezoidal"``, old name ``"paper"``)
    ``(I + α²S)/(1+α²)``, ``"official"`` ``I + α²KKᵀ``."""
    eye = np.eye(c * h * w)
    if variant != "official":
        return (eye + alpha**2 * same_block(c, h, w, s)) / (1 + alpha**2)
    k = box_matrix(c, h, w, s)
    return eye + alpha**2 * k @ k.T


def updown_operator(c: int, h: int, w: int, s: int) -> np.ndarray:
    """``up(down(·))`` (box average over ``s×s`` blocks, then nearest upsampling) as a matrix."""
    return same_block(c, h, w, s) / s**2


def clone(g: torch.Generator) -> torch.Generator:
    """A generator in the same state as ``g`` (to replay its draws)."""
    return torch.Generator(device=g.device).set_state(g.get_state())


@pytest.fixture(scope="session")
def ref() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        dct_matrix=dct_matrix,
        attenuation=attenuation,
        patch_dct_operator=patch_dct_operator,
        blur_operator=blur_operator,
        same_block=same_block,
        box_matrix=box_matrix,
        noise_cov=noise_cov,
        updown_operator=updown_operator,
        clone=clone,
    )


def pytest_collection_modifyitems(session, config, items):
    """The strict-JSON check reads what every other test wrote: run it last."""
    last = [i for i in items if i.nodeid.endswith("test_every_json_the_suite_wrote_is_strict")]
    items[:] = [i for i in items if i not in last] + last
