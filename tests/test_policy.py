"""Per-layer decisions: true reasons for every skip, warnings when filters match nothing or
nothing converts, on_indivisible='nearest' never settling on cg=1, patterns given as a string."""

import warnings

import pytest
from torch import nn

from scc_convert import SCCConv2d, convert


def pointwise_chain(*channels):
    """1x1 convs ``channels[0] -> channels[1] -> ...`` with ReLUs, named 0, 2, 4, ..."""
    layers = []
    for cin, cout in zip(channels, channels[1:]):
        layers += [nn.Conv2d(cin, cout, 1), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def quiet_convert(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(*args, **kwargs)


def test_nearest_never_settles_on_cg_1():
    # 19 and 151 are prime (as in timm's rexnet): their only divisors are 1 and themselves
    model = pointwise_chain(16, 19, 151, 18, 32)
    small, report = quiet_convert(model, cg=4, on_indivisible="nearest", example_inputs=(1, 16, 4, 4))
    reasons = {r.name: r for r in report.layers}
    for name, cin in (("2", 19), ("4", 151)):
        assert not reasons[name].converted and type(small.get_submodule(name)) is nn.Conv2d
        assert reasons[name].reason == (f"cg=4 does not divide in_channels={cin} and its nearest divisor is 1, "
                                        "which would save nothing (on_indivisible='nearest')")
    assert reasons["6"].converted and reasons["6"].cg == 3 and reasons["6"].reason == "cg 4 -> 3: nearest divisor of 18"
    assert reasons["0"].converted and reasons["0"].cg == 4


def test_a_layer_cg_does_not_divide_is_skipped_by_default():
    _, report = quiet_convert(pointwise_chain(16, 19, 32), cg=4, example_inputs=(1, 16, 4, 4))
    assert report.layers[1].reason == "cg=4 does not divide in_channels=19 (on_indivisible='skip')"
    assert report.layers[1].cause == "indivisible"


def test_warning_when_nothing_converts():
    with pytest.warns(UserWarning, match=r"convert: no layer was converted \(2 candidates skipped: 2 whose input "
                                         r"channels cg does not divide \(first: 0, cg=7 does not divide in_channels=16"):
        _, report = convert(pointwise_chain(16, 16, 8), cg=7, example_inputs=(1, 16, 4, 4))
    assert report.converted == [] and report.warnings[-1].startswith("no layer was converted")
    assert "warning: no layer was converted" in str(report)


@pytest.mark.parametrize("kwargs,what", [
    ({"include": ["features.*"]}, "include pattern 'features.*'"),
    ({"exclude": "re:layer\\d+"}, "exclude pattern 're:layer\\d+'"),
    ({"overrides": {"blocks.*": {"cg": 2}}}, "overrides pattern 'blocks.*'"),
])
def test_warning_when_a_filter_matches_nothing(kwargs, what):
    with pytest.warns(UserWarning) as record:
        _, report = convert(pointwise_chain(16, 32, 32), example_inputs=(1, 16, 4, 4), **kwargs)
    messages = [str(w.message) for w in record]
    assert f"convert: {what} matches no candidate layer (candidate names look like '2')" in messages
    assert report.warnings[0] == messages[0].removeprefix("convert: ")


def test_no_warning_when_all_is_well():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = convert(pointwise_chain(16, 32, 32), include=["0", "2"], example_inputs=(1, 16, 4, 4))
    assert report.warnings == [] and len(report.converted) == 2


@pytest.mark.parametrize("patterns", ["pw", "dw_pw,pw", " pw , dw_pw ", ("pw",)])
def test_patterns_as_a_string(patterns):
    small, report = convert(pointwise_chain(16, 32), patterns=patterns, example_inputs=(1, 16, 4, 4))
    assert isinstance(small.get_submodule("0"), SCCConv2d) and "pw" in report.patterns


def test_unknown_pattern_in_a_string():
    with pytest.raises(ValueError, match=r"unknown pattern\(s\) \['pww'\]; choose from \['dw_pw', 'pw', 'std', 'linear'\]"):
        convert(pointwise_chain(16, 32), patterns="dw_pw,pww")


def test_skip_summary_names_each_cause_with_its_first_layer():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), pointwise_chain(16, 8, 19, 32))
    _, report = quiet_convert(model, min_channels=10, example_inputs=(1, 3, 8, 8))
    assert report.skip_summary() == (
        "3 candidates skipped: 1 whose pattern is not enabled (first: 0, pattern 'std' not enabled "
        "(patterns=['dw_pw', 'pw'])); 1 below min_channels (first: 1.2, in_channels=8 < min_channels=10); "
        "1 whose input channels cg does not divide (first: 1.4, cg=4 does not divide in_channels=19 "
        "(on_indivisible='skip'))")


class Branchy(nn.Module):
    """fx cannot trace the branch on a tensor value; the same TraceError in every block."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return self.pw(x) if x.sum() > 0 else -self.pw(x)


def test_one_trace_error_repeated_is_listed_once():
    model = nn.Sequential(*[Branchy() for _ in range(6)])
    _, report = quiet_convert(model, example_inputs=(1, 16, 4, 4))
    note = next(line for line in str(report).splitlines() if line.startswith("note:"))
    assert note.count("TraceError") == 1 and "Failures: <model>, 0 and 5 more: TraceError" in note
    assert len(note) < 400
