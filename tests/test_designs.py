import numpy as np
import pytest

from miajax.data import disjoint_split, lira_keep, paired_keep


def _reference_lira_keep(m, n, pkeep, seed):
  """The released LiRA design, verbatim formula, on the global RNG."""
  saved = np.random.get_state()
  try:
    np.random.seed(seed)
    u = np.random.uniform(0, 1, size=(m, n))
    return u.argsort(0) < int(pkeep * m)
  finally:
    np.random.set_state(saved)


@pytest.mark.parametrize(
  "m,n,pkeep,seed",
  [
    (16, 1000, 0.5, 0),
    (64, 500, 0.5, 0),
    (7, 333, 0.5, 3),
    (10, 257, 0.3, 12345),
    (256, 50, 0.5, 0),
    (5, 40, 0.9, 2**32 - 1),
  ],
)
def test_lira_keep_bit_identical_to_reference(m, n, pkeep, seed):
  expected = _reference_lira_keep(m, n, pkeep, seed)
  got = lira_keep(m, n, pkeep=pkeep, seed=seed)
  assert got.dtype == np.bool_ and got.shape == (m, n)
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(got.sum(0), np.full(n, int(pkeep * m)))


def test_lira_keep_leaves_global_rng_alone():
  np.random.seed(777)
  before = np.random.get_state()
  lira_keep(8, 100, seed=0)
  after = np.random.get_state()
  assert before[0] == after[0]
  np.testing.assert_array_equal(before[1], after[1])
  assert before[2:] == after[2:]


def test_lira_keep_default_is_seed_zero_half():
  np.testing.assert_array_equal(
    lira_keep(16, 100), _reference_lira_keep(16, 100, 0.5, 0)
  )
  assert not np.array_equal(
    lira_keep(16, 100, seed=1), lira_keep(16, 100, seed=0)
  )


@pytest.mark.parametrize(
  "kwargs,err",
  [
    (dict(num_models=1, num_examples=10), ValueError),  # int(0.5 * 1) = 0
    (
      dict(num_models=4, num_examples=10, pkeep=0.1),
      ValueError,
    ),  # int(0.4) = 0
    (dict(num_models=4, num_examples=10, pkeep=0.0), ValueError),
    (dict(num_models=4, num_examples=10, pkeep=1.0), ValueError),
    (dict(num_models=4, num_examples=0), ValueError),
    (dict(num_models=4.0, num_examples=10), TypeError),
    (dict(num_models=True, num_examples=10), TypeError),
    (dict(num_models=4, num_examples=10, seed=-1), ValueError),
    (dict(num_models=4, num_examples=10, pkeep="0.5"), TypeError),
  ],
)
def test_lira_keep_rejects_bad_arguments(kwargs, err):
  m, n = kwargs.pop("num_models"), kwargs.pop("num_examples")
  with pytest.raises(err):
    lira_keep(m, n, **kwargs)


@pytest.mark.parametrize("m,n", [(2, 10), (8, 101), (16, 1000)])
def test_paired_keep_complementary_halves(m, n):
  keep = paired_keep(m, n, seed=5)
  assert keep.dtype == np.bool_ and keep.shape == (m, n)
  np.testing.assert_array_equal(keep[0::2], ~keep[1::2])
  np.testing.assert_array_equal(keep.sum(0), np.full(n, m // 2))
  sizes = keep.sum(1)
  assert set(sizes.tolist()) <= {n // 2, n - n // 2}
  np.testing.assert_array_equal(sizes[0::2] + sizes[1::2], np.full(m // 2, n))


def test_paired_keep_pairs_are_independent_and_seeded():
  keep = paired_keep(16, 1000, seed=0)
  # 8 independent halves of 1000 examples: two equal ones would be a bug.
  assert len({row.tobytes() for row in keep[0::2]}) == 8
  # Halves are random, not a block of the first N/2 indices.
  assert 200 < keep[0, :500].sum() < 300  # ~250 expected
  np.testing.assert_array_equal(keep, paired_keep(16, 1000, seed=0))
  assert not np.array_equal(keep, paired_keep(16, 1000, seed=1))


@pytest.mark.parametrize("m,n", [(3, 10), (0, 10), (4, 1)])
def test_paired_keep_rejects_bad_arguments(m, n):
  with pytest.raises(ValueError, match="num_models|num_examples"):
    paired_keep(m, n)


def test_disjoint_split_blocks():
  sizes = {
    "target_in": 100,
    "target_out": 50,
    "shadow_in": 70,
    "shadow_out": 30,
  }
  blocks = disjoint_split(300, sizes, seed=3)
  assert set(blocks) == set(sizes)
  for name, size in sizes.items():
    assert blocks[name].shape == (size,) and blocks[name].dtype == np.int64
    assert np.all(np.diff(blocks[name]) > 0)  # sorted, no repeats
  union = np.concatenate(list(blocks.values()))
  assert len(np.unique(union)) == 250
  assert union.min() >= 0 and union.max() < 300
  # Random, not the leading indices in order.
  assert not np.array_equal(blocks["target_in"], np.arange(100))
  as_list = disjoint_split(300, [100, 50, 70, 30], seed=3)
  for name in sizes:
    np.testing.assert_array_equal(blocks[name], as_list[name])


def test_disjoint_split_exact_fit_and_empty_blocks():
  blocks = disjoint_split(10, [4, 6, 0, 0])
  np.testing.assert_array_equal(
    np.sort(np.concatenate([blocks["target_in"], blocks["target_out"]])),
    np.arange(10),
  )
  assert blocks["shadow_in"].size == 0


@pytest.mark.parametrize(
  "sizes,err",
  [
    ([100, 100, 100, 1], ValueError),
    ([1, 2, 3], ValueError),
    ([1, 2, 3, -1], ValueError),
    ({"target_in": 1, "target_out": 1}, ValueError),
    ([1.5, 1, 1, 1], TypeError),
    ("abcd", TypeError),
  ],
)
def test_disjoint_split_rejects_bad_sizes(sizes, err):
  with pytest.raises(err):
    disjoint_split(300, sizes)
