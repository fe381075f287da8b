import pytest

from hyperattn.plan import causal_schedule


@pytest.mark.parametrize("n,prefix,min_len", [(100, 0, 8), (4097, 0, 4096), (131072, 0, 4096), (1 << 20, 7, 4096),
                                              (9, 3, 1), (1000, 500, 100)])
def test_schedule_shapes(n, prefix, min_len):
    s = causal_schedule(n, n + prefix, min_len)
    assert s.prefix_len == prefix
    assert s.head_len + s.main_len == n
    assert 0 <= s.head_len < s.num_leaves
    assert 1 <= s.leaf_len <= min_len
    assert (n >> (s.num_levels - 1)) > min_len  # no level more than needed
    assert sum(s.num_rectangles(l) * 2 * s.rectangle_side(l) for l in range(1, s.num_levels + 1)) == (
        s.num_levels * s.main_len)


def test_exact_when_short_and_error_when_more_queries_than_keys():
    assert causal_schedule(4096, 4096, 4096) is None
    assert causal_schedule(10, 50, 10) is None
    with pytest.raises(ValueError, match="num_queries <= num_keys"):
        causal_schedule(11, 10, 4)
