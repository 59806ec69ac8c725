"""Fréchet distance: zero for a set against itself, and equal to the textbook formula computed another way."""

import numpy as np
import pytest
import scipy.linalg

from showo_jax.evaluation import frechet


def _reference(a, b):
  """pytorch-fid's route in float64: the complex sqrtm of S_a S_b, real part of its trace."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s_a @ s_b)
  return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean).real)


def test_distance_of_a_set_to_itself_is_zero_and_matches_the_sqrtm_formula(tmp_path):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
  b = rng.normal(0.3, 1.5, size=(300, 16)) @ rng.normal(size=(16, 16))
  sa, sb = frechet.statistics(a), frechet.statistics(b)
  assert abs(frechet.distance(*sa, *sa)) < 1e-8
  want = _reference(a, b)
  assert want > 1.0  # different sets, far apart
  assert frechet.distance(*sa, *sb) == pytest.approx(want, rel=1e-9)
  # 1-D closed form: (mu_a - mu_b)^2 + (sd_a - sd_b)^2
  x, y = rng.normal(1.0, 2.0, 1000), rng.normal(-0.5, 0.5, 1000)
  closed = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
  assert frechet.distance(*frechet.statistics(x[:, None]), *frechet.statistics(y[:, None])) == pytest.approx(closed)
  # stats round-trip through the .npz file
  frechet.save_statistics(str(tmp_path / "real.npz"), *sa)
  mu, sigma = frechet.load_statistics(str(tmp_path / "real.npz"))
  np.testing.assert_array_equal(mu, sa[0])
  np.testing.assert_array_equal(sigma, sa[1])


def test_bad_statistics_are_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match="need"):
    frechet.statistics(np.zeros((1, 4)))
  with pytest.raises(ValueError, match="different widths: 4 and 3"):
    frechet.distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))
  np.savez(tmp_path / "x.npz", features=np.zeros(3))
  with pytest.raises(ValueError, match="no Fréchet statistics"):
    frechet.load_statistics(str(tmp_path / "x.npz"))
