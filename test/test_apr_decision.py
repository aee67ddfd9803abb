"""LOCALIZED only within the precision class, by the pose's own covariance (localizers/precision_class.py).

References: the chi-square quantile (scipy) for the bound; a Gaussian residual model with known sigma
for the held-out measurement of the decision; an independent recomputation of each APR result's
status from its covariance, on the real (cached) tiny APR artifact.
"""

from __future__ import annotations

import numpy as np
import pytest
from ros_helpers import TINY_CAMERA, tiny_frames, trained_tiny_artifact
from scipy.stats import chi2

from visloc_core.localizers import Status, load_localizer
from visloc_core.localizers.precision_class import PrecisionClass, sigmas, uncertain_reasons
from visloc_core.models.apr.familiarity import heldout_decision


def test_bound_is_the_chi_square_radius() -> None:
    k = np.sqrt(chi2.ppf(0.68, 3))  # 1.88: a 3-D Gaussian lies within k sigma with probability 0.68
    pc = PrecisionClass()
    assert uncertain_reasons(0.25 / k * 0.99, 2.0 / k * 0.99, pc) == []
    assert "position" in uncertain_reasons(0.25 / k * 1.01, 0.1, pc)[0]
    assert "rotation" in uncertain_reasons(0.01, 2.0 / k * 1.01, pc)[0]
    assert uncertain_reasons(5.0, 50.0, PrecisionClass(None, None)) == []  # no bounds set
    # largest standard deviation of each block, whatever the axis
    cov = np.diag([0.01, 0.09, 0.04, 1e-6, np.radians(3.0) ** 2, 1e-6])
    st, sr = sigmas(cov)
    assert st == pytest.approx(0.3) and sr == pytest.approx(3.0)
    with pytest.raises(ValueError, match="accuracy_m"):
        PrecisionClass.from_dict({"accuracy_cm": 25})
    assert PrecisionClass.from_dict(None) == PrecisionClass()  # artifacts without the key: the default


@pytest.mark.parametrize("sigma_m, published", [(0.03, 1.0), (0.5, 0.0)])
def test_heldout_decision_publishes_what_its_covariance_allows(sigma_m: float, published: float) -> None:
    """Residuals drawn with a known sigma per axis (rotation 0.2 deg): a 3 cm regressor publishes every
    held-out frame, all within 25 cm (a 3-D Gaussian of 3 cm is beyond 25 cm with probability ~1e-15);
    a 0.5 m regressor (the demo's posenet is ~0.7 m) publishes nothing at 25 cm / 2 deg. NEES medians
    near the chi-square median 2.37 (fold-fitted variance)."""
    rng = np.random.default_rng(0)
    n = 400
    d = rng.uniform(0.0, 0.2, n)
    dt = rng.normal(scale=sigma_m, size=(n, 3))
    dw = rng.normal(scale=np.radians(0.2), size=(n, 3))
    out = heldout_decision(d, dt, dw, None)
    assert out["n"] == n and out["published"] == published
    assert out["precision"] == (1.0 if published else None)
    assert 1.7 < out["nees_median_t"] < 3.2 and 1.7 < out["nees_median_r"] < 3.2


def test_apr_status_follows_its_covariance() -> None:
    """On the real tiny APR artifact (trained without a precision class), with bounds just below and
    just above the frames' own k sigma: each result is LOCALIZED exactly when sqrt(chi2_3(0.68)) x its
    largest position sigma is within the bound; the refused ones are NOT_LOCALIZED with the reason, the
    pose kept in extras and equal to the ungated pose; REJECTED stays REJECTED."""
    art = trained_tiny_artifact()
    free, gated = load_localizer(art), load_localizer(art)
    frames = [(img, TINY_CAMERA, i) for i, (img, _) in enumerate(tiny_frames(np.linspace(0.05, 0.95, 12)))]
    ref = [free.localize(img, cam, stamp) for img, cam, stamp in frames]
    ok = [r for r in ref if r.status == Status.LOCALIZED]
    assert len(ok) >= 3
    k = np.sqrt(chi2.ppf(0.68, 3))
    st = np.array([np.sqrt(np.max(np.diag(r.covariance_66)[:3])) for r in ok])
    # a bound just below the smallest k sigma refuses every pose, one just above the largest publishes
    # every one (the sigmas of this toy model can all be equal: its variance is mostly the intercept)
    for bound, expect_pub in ((float(st.min() * k * 0.999), 0), (float(st.max() * k * 1.001), len(ok))):
        gated.precision_class = PrecisionClass(accuracy_m=bound, accuracy_deg=None)
        n_pub = 0
        for (img, cam, stamp), r in zip(frames, ref):
            g = gated.localize(img, cam, stamp)
            if r.status != Status.LOCALIZED:
                assert g.status == r.status  # REJECTED stays REJECTED
                continue
            if np.sqrt(np.max(np.diag(r.covariance_66)[:3])) * k <= bound:
                n_pub += 1
                assert g.status == Status.LOCALIZED
                np.testing.assert_allclose(g.T_world_cam, r.T_world_cam, atol=1e-9)
            else:
                assert g.status == Status.NOT_LOCALIZED and "uncertain: position sigma" in g.status_reason
                assert not np.isfinite(g.T_world_cam).any()
                np.testing.assert_allclose(np.array(g.extras["T_world_cam_refused"]), r.T_world_cam, atol=1e-9)
        assert n_pub == expect_pub
