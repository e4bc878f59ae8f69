"""The encoder's PCA map: fitted from moments, saved once, refused when stale (no Spark)."""
from __future__ import annotations

import numpy as np
import pytest
from longtail.core.errors import InputError
from longtail.encoders.pca import PcaMap, from_moments, load_pca, require_pca, save_pca


def test_pca_from_moments_matches_an_svd_and_projects_exactly():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 6)) * np.array([5, 4, 3, 2, 1, 0.5]) + 3.0
    mean, comps, explained = from_moments(len(x), x.sum(0), x.T @ x, 3)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    signs = np.sign(vt[np.arange(3), np.abs(vt[:3]).argmax(1)])
    np.testing.assert_allclose(comps, vt[:3] * signs[:, None], atol=1e-5)
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-5)
    assert explained == pytest.approx((s[:3] ** 2).sum() / (s**2).sum(), rel=1e-6)
    pca = PcaMap(mean, comps, explained, "m", 0)
    np.testing.assert_allclose(pca.project(x), (x - x.mean(0)) @ (vt[:3] * signs[:, None]).T, atol=1e-4)


def test_saved_map_round_trips_and_a_stale_one_is_refused(tmp_path):
    root = str(tmp_path)
    assert load_pca(root, "minilm") is None
    with pytest.raises(InputError, match="no PCA map of encoder 'minilm'"):
        require_pca(root, "minilm", 0, 2)
    pca = PcaMap(np.ones(4, np.float32), np.eye(2, 4, dtype=np.float32), 0.5, "minilm", 3)
    save_pca(root, pca)
    again = require_pca(root, "minilm", 3, 2)
    assert np.array_equal(again.components, pca.components) and again.explained == 0.5
    with pytest.raises(InputError, match="version 3, the table is at version 4"):
        require_pca(root, "minilm", 4, 2)
    with pytest.raises(InputError, match="has 2 components, expected 8"):
        require_pca(root, "minilm", 3, 8)
