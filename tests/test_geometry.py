import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import algorithm1
from scc_convert import SCCGeometry
from scc_convert.geometry import valid_cgs


def test_poster_figure6_case():
    # Cin = 4, cg = 2, co = 50%: windows {0,1}, {1,2}, {2,3}, {3,0}.
    g = SCCGeometry(4, 4, cg=2, co=0.5)
    assert (g.group_width, g.window_stride, g.cyclic_distance) == (2, 1, 4)
    assert [g.window_channels(i) for i in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert g.default_window_of == (0, 1, 2, 3)


@pytest.mark.parametrize(
    "cin,cout,cg,co,gw,s,cd",
    [
        (128, 128, 4, 0.5, 32, 16, 8),
        (96, 96, 2, 0.25, 48, 36, 8),
        (512, 512, 8, 0.5, 64, 32, 16),
        (12, 12, 3, 0.0, 4, 4, 3),
        (10, 10, 1, 0.3, 10, 7, 10),
        (10, 4, 1, 0.3, 10, 7, 4),  # Cout < number of distinct windows
        (16, 16, 1, 0.5, 16, 8, 2),
    ],
)
def test_derived_quantities(cin, cout, cg, co, gw, s, cd):
    g = SCCGeometry(cin, cout, cg, co)
    assert (g.group_width, g.window_stride, g.cyclic_distance) == (gw, s, cd)
    assert len(g.window_starts) == cd


@settings(max_examples=300, deadline=None)
@given(
    cin=st.integers(1, 96),
    cout=st.integers(1, 96),
    cg_index=st.integers(0, 20),
    co=st.floats(0.0, 0.99, allow_nan=False),
)
def test_matches_algorithm1(cin, cout, cg_index, co):
    divisors = valid_cgs(cin)
    cg = divisors[cg_index % len(divisors)]
    g = SCCGeometry(cin, cout, cg, co)
    windows = algorithm1(cin, cout, cg, co)
    assert g.cyclic_distance == len(windows)
    assert g.window_starts == tuple(start for start, _ in windows)
    for i, (start, _) in enumerate(windows):
        assert g.window_channels(i) == tuple((start + k) % cin for k in range(g.group_width))
    assert g.default_window_of == tuple(o % len(windows) for o in range(cout))


@settings(max_examples=200, deadline=None)
@given(
    cin=st.integers(1, 64),
    cout=st.integers(1, 64),
    cg_index=st.integers(0, 20),
    co=st.floats(0.0, 0.99, allow_nan=False),
)
def test_plan_places_every_output_on_its_window(cin, cout, cg_index, co):
    divisors = valid_cgs(cin)
    g = SCCGeometry(cin, cout, divisors[cg_index % len(divisors)], co)
    for order in ("auto", "window", "chunk"):
        plan = g.plan(order=order)
        if order != "window":
            assert plan.step is not None and plan.ext_channels <= cin + g.group_width
        if plan.step is not None:
            assert plan.starts == tuple(b * plan.step for b in range(plan.batches))
            assert plan.starts[-1] < cin
        assert sorted(plan.position) == sorted(set(plan.position))  # distinct rows
        for o, (b, r) in enumerate(zip(plan.batch_of, plan.slot_of)):
            assert 0 <= b < plan.batches and 0 <= r < plan.slots
            channels = tuple((plan.starts[b] + k) % cin for k in range(g.group_width))
            assert channels == g.input_channels_of()[o]


def test_plan_regular_for_default_order():
    assert SCCGeometry(128, 128, 4, 0.5).plan().regular
    assert not SCCGeometry(16, 12, 4, 0.5).plan().regular  # 12 outputs on 8 windows


def test_window_of_validation():
    g = SCCGeometry(8, 8, 2, 0.5)  # cd = 4, two outputs per window
    assert g.check_window_of([3, 3, 2, 2, 1, 1, 0, 0]) == (3, 3, 2, 2, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="permutation of the default"):
        g.check_window_of([0, 0, 0, 1, 1, 2, 2, 3])
    with pytest.raises(ValueError, match="one per output channel"):
        g.check_window_of([0, 1, 2, 3])
    with pytest.raises(ValueError, match="windows are 0..3"):
        g.check_window_of([0, 1, 2, 4, 0, 1, 2, 3])
    with pytest.raises(TypeError, match="sequence of ints"):
        g.check_window_of(["a"] * 8)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(in_channels=8, out_channels=8, cg=0, co=0.5), ValueError, "cg=0 is invalid"),
        (dict(in_channels=10, out_channels=8, cg=4, co=0.5), ValueError, r"in_channels=10 is not divisible by cg=4.*1, 2, 5, 10"),
        (dict(in_channels=8, out_channels=8, cg=2, co=1.0), ValueError, r"co=1.0 is outside \[0, 1\)"),
        (dict(in_channels=8, out_channels=8, cg=2, co=-0.1), ValueError, r"outside \[0, 1\)"),
        (dict(in_channels=8, out_channels=0, cg=2, co=0.5), ValueError, "must be >= 1"),
        (dict(in_channels=8, out_channels=8, cg=2.0, co=0.5), TypeError, "cg must be an int"),
        (dict(in_channels=8, out_channels=8, cg=2, co="0.5"), TypeError, "co must be a float"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SCCGeometry(**kwargs)


def test_error_names_the_layer():
    with pytest.raises(ValueError, match="SCC layer 'features.3.conv'"):
        SCCGeometry(30, 30, 4, 0.5, layer="features.3.conv")


def test_costs():
    g = SCCGeometry(128, 256, 4, 0.5)
    assert g.params() == 256 * 32
    assert g.params(bias=True) == 256 * 32 + 256
    assert g.macs(2, 7, 5) == 2 * 7 * 5 * 256 * 32


def test_cyclic_distance_formula():
    for cin in (6, 12, 30, 64):
        for cg in valid_cgs(cin):
            for co in (0.0, 0.25, 0.5, 0.75):
                g = SCCGeometry(cin, 1000, cg, co)
                assert g.cyclic_distance == cin // math.gcd(cin, g.window_stride)


@settings(max_examples=150, deadline=None)
@given(
    cin=st.integers(1, 48),
    cout=st.integers(1, 48),
    cg_index=st.integers(0, 10),
    co=st.floats(0.0, 0.95, allow_nan=False),
    tile=st.sampled_from([1, 3, 16, 64]),
    seed=st.integers(0, 2**16),
)
def test_sorted_rows_tables_against_brute_force(cin, cout, cg_index, co, tile, seed):
    """The GPU kernels' tables: rows sorted by window start; each row tile's band holds every
    channel its rows read; each channel tile's run is exactly the rows that read it."""
    import random

    divisors = valid_cgs(cin)
    g = SCCGeometry(cin, cout, cg=divisors[cg_index % len(divisors)], co=co)
    window_of = list(g.default_window_of)
    random.Random(seed).shuffle(window_of)
    t = g.sorted_rows(window_of)
    reads = g.input_channels_of(window_of)
    assert sorted(t.out_channel) == list(range(cout))
    assert list(t.window_start) == sorted(t.window_start)
    assert all(t.window_start[r] == g.window_starts[window_of[o]] for r, o in enumerate(t.out_channel))
    assert cin % t.start_alignment == 0 and all(s % t.start_alignment == 0 for s in t.window_start)
    gw = g.group_width
    for i, (first, width) in enumerate(t.row_tiles(tile)):
        rows = range(i * tile, min((i + 1) * tile, cout))
        band = [(first + k) % cin for k in range(width)]
        for r in rows:
            offset = t.window_start[r] - first
            assert 0 <= offset and offset + gw <= width
            assert tuple(band[offset:offset + gw]) == reads[t.out_channel[r]]
        assert width == t.window_start[rows[-1]] - t.window_start[rows[0]] + gw
    for i, (first, count) in enumerate(t.channel_tiles(tile)):
        channels = set(range(i * tile, min((i + 1) * tile, cin)))
        want = {r for r in range(cout) if channels & set(reads[t.out_channel[r]])}
        assert {(first + j) % cout for j in range(count)} == want and count == len(want)


def test_sorted_rows_example():
    t = SCCGeometry(8, 8, cg=2, co=0.5).sorted_rows()
    assert t.out_channel == (0, 4, 1, 5, 2, 6, 3, 7)
    assert t.row_tiles(4) == ((0, 6), (4, 6))  # windows 0,1 read 0..5; windows 2,3 read 4..7,0,1
    assert t.channel_tiles(4) == ((6, 6), (2, 6))  # channels 0..3: windows 3, 0, 1 (rows 6, 7, 0..3)
