"""The SCC op against the fp64 dense masked-weight reference, plus the op's integrations.

Every test runs on each CPU implementation (the ``cpu_backend`` fixture): the native kernel,
and the PyTorch path; a test that takes ``forward`` runs the PyTorch path with each of its
two forwards. Tests of the PyTorch path's own internals are marked ``torch_path``.
"""

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from reference import algorithm1, scc_reference
from scc_convert.functional import scc_conv2d
from scc_convert.geometry import valid_cgs
from scc_convert.ops import native, torch_path

FORWARDS = ["windows", "masked_dense"]  # the PyTorch path's two forwards
IMPLEMENTATIONS = [("torch", "windows"), ("torch", "masked_dense"), ("native", None)]


def pytest_generate_tests(metafunc):
    backends = ["torch"] if metafunc.definition.get_closest_marker("torch_path") else ["torch", "native"]
    if "forward" in metafunc.fixturenames:
        pairs = [(b, f) for b, f in IMPLEMENTATIONS if b in backends]
        metafunc.parametrize("cpu_backend,forward", pairs, indirect=["cpu_backend"], ids=[f or b for b, f in pairs])
    else:
        metafunc.parametrize("cpu_backend", backends, indirect=True)


@pytest.fixture(autouse=True)
def cpu_backend(request):
    """The CPU implementation the test runs on (``native.use_backend``)."""
    if request.param == "native" and not native.status()["available"]:
        pytest.skip(f"the native CPU kernel is unavailable: {native.status()['reason']}")
    with native.use_backend(request.param):
        yield request.param


def forward_impl(forward):
    """The PyTorch path's forward ``forward``, forced (``None``: the native kernel runs)."""
    return contextlib.nullcontext() if forward is None else torch_path.forced_forward(forward)

# (cin, cout, cg, co, what the case covers)
GEOMETRIES = [
    (8, 8, 2, 0.5, "poster-like, last window wraps"),
    (128, 128, 4, 0.5, "bench shape"),
    (96, 96, 2, 0.25, "window starts wrap; chunk-ordered plan"),
    (12, 5, 4, 0.34, "Cout < cd"),
    (16, 24, 4, 0.5, "Cout not a multiple of cd"),
    (16, 12, 4, 0.5, "Cout not a multiple of cd, fewer outputs than windows twice"),
    (120, 64, 4, 0.3, "gcd(Cin, s) = 3, many windows"),
    (10, 7, 1, 0.3, "cg = 1, co not a round fraction"),
    (12, 12, 3, 0.0, "co = 0"),
    (6, 6, 6, 0.0, "gw = 1"),
    (32, 32, 2, 0.75, "large overlap"),
    (1, 3, 1, 0.0, "one input channel"),
]


def _inputs(n, cin, cout, gw, h=5, w=4, dtype=torch.float64, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(cout, gw, generator=gen, dtype=dtype)
    b = torch.randn(cout, generator=gen, dtype=dtype) if bias else None
    return x, weight, b


def _grads(fn, x, weight, bias, gy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias) if t is not None]
    out = fn(*leaves) if bias is not None else fn(*leaves, None)
    grads = torch.autograd.grad(out, leaves, gy)
    return out.detach(), grads


@pytest.mark.parametrize("cin,cout,cg,co,case", GEOMETRIES, ids=[g[-1] for g in GEOMETRIES])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("n", [1, 3])
def test_forward_backward_match_reference_fp64(cin, cout, cg, co, case, layout, stride, n, forward):
    x, weight, bias = _inputs(n, cin, cout, cin // cg, h=7, w=5)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y_ref = scc_reference(x, weight, bias, cg=cg, co=co, stride=stride)
    gy = torch.randn_like(y_ref)

    def ours(x_, w_, b_):
        return scc_conv2d(x_, w_, b_, cg=cg, co=co, stride=stride)

    def ref(x_, w_, b_):
        return scc_reference(x_, w_, b_, cg=cg, co=co, stride=stride)

    with forward_impl(forward):
        y, (gx, gw, gb) = _grads(ours, x, weight, bias, gy)
    y_r, (gx_r, gw_r, gb_r) = _grads(ref, x, weight, bias, gy)
    torch.testing.assert_close(y, y_r, atol=1e-10, rtol=0)
    torch.testing.assert_close(gx, gx_r, atol=1e-10, rtol=0)
    torch.testing.assert_close(gw, gw_r, atol=1e-10, rtol=0)
    torch.testing.assert_close(gb, gb_r, atol=1e-10, rtol=0)
    if layout == "channels_last" and cin > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
        if stride == 1:  # with stride 2, autograd's slicing backward picks gx's layout
            assert gx.is_contiguous(memory_format=torch.channels_last)


def test_custom_window_of_matches_reference():
    cin, cout, cg, co = 16, 24, 4, 0.5  # cd = 8, three outputs per window
    default = [o % 8 for o in range(cout)]
    window_of = default[::-1]
    x, weight, bias = _inputs(2, cin, cout, cin // cg)
    y = scc_conv2d(x, weight, bias, cg=cg, co=co, window_of=window_of)
    torch.testing.assert_close(y, scc_reference(x, weight, bias, cg=cg, co=co, window_of=window_of), atol=1e-10, rtol=0)
    gy = torch.randn_like(y)
    _, ours = _grads(lambda a, b, c: scc_conv2d(a, b, c, cg=cg, co=co, window_of=window_of), x, weight, bias, gy)
    _, ref = _grads(lambda a, b, c: scc_reference(a, b, c, cg=cg, co=co, window_of=window_of), x, weight, bias, gy)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the backend is fixed per test
@given(
    cin=st.integers(1, 40),
    cout=st.integers(1, 40),
    cg_index=st.integers(0, 10),
    co=st.floats(0.0, 0.95, allow_nan=False),
    n=st.integers(1, 3),
    hw=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_random_geometries_match_reference(cin, cout, cg_index, co, n, hw, seed, cpu_backend):
    divisors = valid_cgs(cin)
    cg = divisors[cg_index % len(divisors)]
    x, weight, bias = _inputs(n, cin, cout, cin // cg, h=hw, w=hw + 1, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    cd = len(algorithm1(cin, cout, cg, co))
    window_of = [o % cd for o in range(cout)]
    perm = torch.randperm(cout, generator=gen).tolist()
    window_of = [window_of[p] for p in perm]
    y_ref = scc_reference(x, weight, bias, cg=cg, co=co, window_of=window_of)
    gy = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64)
    _, ref = _grads(lambda a, b, c: scc_reference(a, b, c, cg=cg, co=co, window_of=window_of), x, weight, bias, gy)
    for forward in FORWARDS if cpu_backend == "torch" else [None]:
        with forward_impl(forward):
            y, ours = _grads(lambda a, b, c: scc_conv2d(a, b, c, cg=cg, co=co, window_of=window_of), x, weight, bias, gy)
        torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_co_zero_is_grouped_conv_up_to_output_order():
    cin, cout, cg = 12, 12, 3  # windows are the 3 groups; output o reads group o % 3
    x, weight, _ = _inputs(2, cin, cout, cin // cg, bias=False)
    y = scc_conv2d(x, weight, cg=cg, co=0.0)
    # grouped conv wants outputs of group j contiguous: output o sits at (o % 3) * 4 + o // 3
    order = sorted(range(cout), key=lambda o: (o % cg, o // cg))
    grouped = F.conv2d(x, weight[order][:, :, None, None], groups=cg)
    torch.testing.assert_close(y[:, order], grouped, atol=1e-12, rtol=0)


def test_cg_one_is_dense_conv_with_rotated_rows():
    cin, cout, co = 8, 8, 0.25  # s = 6, window i starts at 6i mod 8
    x, weight, _ = _inputs(2, cin, cout, cin, bias=False)
    y = scc_conv2d(x, weight, cg=1, co=co)
    starts = [start for start, _ in algorithm1(cin, cout, 1, co)]
    dense = torch.stack([torch.roll(weight[o], starts[o % len(starts)]) for o in range(cout)])
    torch.testing.assert_close(y, F.conv2d(x, dense[:, :, None, None]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_low_precision_dtypes(dtype, tol, layout, forward):
    x, weight, bias = _inputs(4, 64, 48, 16, h=6, w=6)
    ref = scc_reference(x, weight, bias, cg=4, co=0.5)
    xl = x.to(dtype)
    if layout == "channels_last":
        xl = xl.contiguous(memory_format=torch.channels_last)
    with forward_impl(forward):
        y = scc_conv2d(xl, weight.to(dtype), bias.to(dtype), cg=4, co=0.5)
    assert y.dtype == dtype
    scale = ref.abs().max()
    assert ((y.double() - ref).abs().max() / scale).item() < tol
    wl = weight.to(dtype).requires_grad_()
    scc_conv2d(xl, wl, cg=4, co=0.5).float().square().sum().backward()
    assert wl.grad.dtype == dtype and torch.isfinite(wl.grad.float()).all()


def test_gradcheck():
    x, weight, bias = _inputs(2, 12, 10, 4, h=3, w=2)
    args = tuple(t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(lambda a, b, c: scc_conv2d(a, b, c, cg=3, co=0.5, stride=2), args)
    assert torch.autograd.gradcheck(lambda a, b, c: scc_conv2d(a, b, c, cg=2, co=0.25), args[:1] + (torch.randn(10, 6, dtype=torch.float64, requires_grad=True), args[2]))


def test_only_requested_gradients_are_computed():
    x, weight, _ = _inputs(2, 8, 8, 4, bias=False)
    weight.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        scc_conv2d(x, weight, cg=2, co=0.5).sum().backward()
    macs = 2 * 5 * 4 * 8 * 4
    # forward + the weight gradient only (x does not require grad)
    assert counter.get_total_flops() == 2 * macs + 2 * macs
    assert weight.grad is not None


def test_flop_counter_totals():
    n, cin, cout, h, w, cg = 2, 64, 96, 7, 6, 4
    x, weight, _ = _inputs(n, cin, cout, cin // cg, h=h, w=w, dtype=torch.float32, bias=False)
    x.requires_grad_()
    weight.requires_grad_()
    macs = n * h * w * cout * (cin // cg)
    with FlopCounterMode(display=False) as counter:
        y = scc_conv2d(x, weight, cg=cg, co=0.5)
    assert counter.get_total_flops() == 2 * macs
    with FlopCounterMode(display=False) as counter:
        y = scc_conv2d(x, weight, cg=cg, co=0.5, stride=2)
        y.sum().backward()
    strided = n * 4 * 3 * cout * (cin // cg)
    assert counter.get_total_flops() == 2 * strided * 3  # forward, grad input, grad weight


def test_torch_compile_fullgraph():
    x, weight, bias = _inputs(2, 16, 24, 4, dtype=torch.float32)
    weight.requires_grad_()

    def f(a, b, c):
        return torch.relu(scc_conv2d(a, b, c, cg=4, co=0.5)) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y = compiled(x, weight, bias)
    torch.testing.assert_close(y, f(x, weight, bias))
    y.sum().backward()
    expected = torch.autograd.grad(f(x, weight, bias).sum(), weight)[0]
    torch.testing.assert_close(weight.grad, expected)


def test_torch_compile_inductor():
    x, weight, _ = _inputs(2, 16, 16, 8, dtype=torch.float32, bias=False)
    compiled = torch.compile(lambda a, b: scc_conv2d(a, b, cg=2, co=0.5) + 1, fullgraph=True)
    torch.testing.assert_close(compiled(x, weight), scc_conv2d(x, weight, cg=2, co=0.5) + 1)


def test_torch_export_keeps_the_op():
    from scc_convert import SCCConv2d

    layer = SCCConv2d(16, 32, cg=4, co=0.5, bias=True)
    x = torch.randn(2, 16, 5, 5)
    program = torch.export.export(layer, (x,))
    assert "torch.ops.scc.scc_conv2d" in program.graph_module.code
    torch.testing.assert_close(program.module()(x), layer(x))


def test_bad_op_arguments():
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(ValueError, match="needs gw = in_channels // cg = 4"):
        scc_conv2d(x, torch.randn(8, 3), cg=2, co=0.5)
    with pytest.raises(ValueError, match="not divisible by cg=3"):
        scc_conv2d(x, torch.randn(8, 2), cg=3, co=0.5)
    with pytest.raises(ValueError, match="must be 4-D"):
        scc_conv2d(torch.randn(8, 3, 3), torch.randn(8, 4), cg=2, co=0.5)
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        scc_conv2d(x, torch.randn(8, 4), cg=2, co=1.5)
    with pytest.raises(ValueError, match="stride=0 is invalid"):
        scc_conv2d(x, torch.randn(8, 4), cg=2, co=0.5, stride=0)
    with pytest.raises(ValueError, match="permutation of the default"):
        scc_conv2d(x, torch.randn(8, 4), cg=2, co=0.5, window_of=[0] * 8)


def test_empty_batch():
    x = torch.randn(0, 8, 3, 3, requires_grad=True)
    w = torch.randn(8, 4, requires_grad=True)
    y = scc_conv2d(x, w, cg=2, co=0.5)
    assert y.shape == (0, 8, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_reimport_does_not_register_twice():
    import scc_convert.ops.library as library

    importlib.reload(library)
    x, weight, _ = _inputs(1, 8, 8, 4, bias=False)
    torch.testing.assert_close(library.scc_conv2d_op(x, weight, None, 2, 0.5, None), scc_conv2d(x, weight, cg=2, co=0.5))


def test_noncontiguous_input_and_grad():
    x, weight, _ = _inputs(2, 16, 8, 4, h=6, w=8, bias=False)
    xs = x[:, :, :, ::2]  # non-contiguous view
    y = scc_conv2d(xs, weight, cg=4, co=0.5)
    torch.testing.assert_close(y, scc_reference(xs, weight, cg=4, co=0.5), atol=1e-10, rtol=0)
    xs = xs.detach().requires_grad_()
    gy = torch.randn(2, 8, 4, 6, dtype=torch.float64).transpose(2, 3)  # non-contiguous grad
    scc_conv2d(xs, weight, cg=4, co=0.5).backward(gy)
    xr = xs.detach().clone().requires_grad_()
    scc_reference(xr, weight, cg=4, co=0.5).backward(gy)
    torch.testing.assert_close(xs.grad, xr.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_the_autocast_dtype(dtype):
    from scc_convert import SCCConv2d

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), SCCConv2d(16, 16, 4, 0.5, bias=True))
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    with torch.autocast("cpu", dtype=dtype):
        y = model(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), expected, atol=0.1, rtol=0.05)
    y.float().sum().backward()
    assert model[1].weight.grad.dtype == torch.float32  # parameters stay fp32 under autocast
    with torch.autocast("cpu", dtype=dtype):  # the op itself, called directly
        z = torch.ops.scc.scc_conv2d(x[:, :2].repeat(1, 8, 1, 1), model[1].weight, None, 4, 0.5, None)
    assert z.dtype == dtype


# -- eager calls: the kernel directly when nothing needs to see the op ----------------------


@pytest.fixture
def op_calls(monkeypatch):
    """Counts calls that went through ``torch.ops.scc.scc_conv2d`` (not the direct kernel call)."""
    from scc_convert.ops import library

    calls = []
    real = library.scc_conv2d_op

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(library, "scc_conv2d_op", counting)
    return calls


@pytest.mark.parametrize("cin,cout,cg,co,case", GEOMETRIES, ids=[g[-1] for g in GEOMETRIES])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("n", [1, 3])
def test_direct_eager_call_matches_reference(cin, cout, cg, co, case, layout, n, forward, op_calls):
    x, weight, bias = _inputs(n, cin, cout, cin // cg, h=7, w=5)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    cd = len(algorithm1(cin, cout, cg, co))
    window_of = [o % cd for o in range(cout)][::-1]
    for wo, b in ((None, None), (None, bias), (window_of, bias)):
        with torch.inference_mode(), forward_impl(forward):
            y = scc_conv2d(x, weight, b, cg=cg, co=co, window_of=wo)
        torch.testing.assert_close(y, scc_reference(x, weight, b, cg=cg, co=co, window_of=wo), atol=1e-10, rtol=0)
    assert op_calls == []  # all three ran the kernel directly


def test_direct_call_only_without_grad(op_calls):
    from scc_convert import SCCConv2d

    layer = SCCConv2d(8, 8, 2, 0.5).double()
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    assert op_calls == [] and not y.requires_grad
    y = layer(x)  # the weight needs a gradient: through the op and its autograd
    assert len(op_calls) == 1 and y.requires_grad
    y.sum().backward()
    assert layer.weight.grad is not None


def test_op_is_called_whenever_something_watches(op_calls):
    from scc_convert import SCCConv2d

    layer = SCCConv2d(16, 16, 4, 0.5).eval()
    x = torch.randn(1, 16, 4, 4)

    def goes_through_op(run):
        before = len(op_calls)
        run()
        return len(op_calls) > before

    def flops():
        with FlopCounterMode(display=False) as counter:
            layer(x)
        assert counter.get_total_flops() == 2 * (1 * 4 * 4) * 16 * 4  # 2 * N*H*W * Cout * gw

    def autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16

    def profiler():
        with torch.profiler.profile() as prof:
            layer(x)
        assert any(e.name == "scc::scc_conv2d" for e in prof.events())

    def trace():
        assert "scc::scc_conv2d" in str(torch.jit.trace(layer, x).graph)

    def meta():
        with torch.device("meta"):  # a torch-function mode, and meta tensors
            assert SCCConv2d(16, 16, 4, 0.5)(torch.empty(2, 16, 4, 4)).shape == (2, 16, 4, 4)

    with torch.inference_mode():
        assert not goes_through_op(lambda: layer(x))
        for run in (flops, autocast, profiler, meta):
            assert goes_through_op(run), run.__name__
    with torch.no_grad():
        assert goes_through_op(trace)


@pytest.mark.parametrize(
    "cin,cout,cg,co,per_image",
    [
        (16, 16, 4, 0.5, True),  # windows are whole 2-channel blocks, every slot filled
        (96, 96, 2, 0.25, True),  # chunk-ordered, outputs not in slot order
        (16, 12, 4, 0.5, False),  # Cout not a multiple of cd: empty slots
        (10, 7, 1, 0.3, False),  # 7 outputs over 10 one-channel chunk starts: empty slots
        (6, 6, 2, 0.34, False),  # gw = 3, s = 2, blocks of gcd(6, 2) = 2 do not tile a window
    ],
)
@pytest.mark.torch_path
def test_both_backward_paths_match_reference(cin, cout, cg, co, per_image, monkeypatch):
    from scc_convert.ops import torch_path

    calls = []
    real = torch_path._backward_per_image
    monkeypatch.setattr(torch_path, "_backward_per_image", lambda *a: calls.append(1) or real(*a))
    x, weight, bias = _inputs(2, cin, cout, cin // cg, h=3, w=4)
    gy = torch.randn(2, cout, 3, 4, dtype=torch.float64)
    _, ours = _grads(lambda a, b, c: scc_conv2d(a, b, c, cg=cg, co=co), x, weight, bias, gy)
    _, ref = _grads(lambda a, b, c: scc_reference(a, b, c, cg=cg, co=co), x, weight, bias, gy)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert bool(calls) == per_image


@pytest.mark.torch_path
def test_forward_implementation_follows_window_size(monkeypatch):
    from scc_convert.geometry import SCCGeometry

    calls = []
    real = torch_path._forward_masked_dense
    monkeypatch.setattr(torch_path, "_forward_masked_dense", lambda *a: calls.append(a[3]) or real(*a))
    small, large = SCCGeometry(64, 64, 4, 0.5), SCCGeometry(512, 512, 4, 0.5)  # cg*Cin*M = 2048 / 131072
    assert torch_path.uses_masked_dense(small) and not torch_path.uses_masked_dense(large)
    with torch.inference_mode():
        for geom in (small, large):
            x = torch.randn(2, geom.in_channels, 3, 3)
            w = torch.randn(geom.out_channels, geom.group_width)
            torch.testing.assert_close(
                scc_conv2d(x, w, cg=4, co=0.5), scc_reference(x.double(), w.double(), None, cg=4, co=0.5).float(),
                atol=1e-4, rtol=1e-4,
            )
    assert calls == [small]


@pytest.mark.parametrize("cin,cout,cg,co,case", GEOMETRIES, ids=[g[-1] for g in GEOMETRIES])
@pytest.mark.parametrize("n", [1, 2])
def test_output_is_not_a_view_and_can_be_modified_in_place(cin, cout, cg, co, case, forward, n):
    # autograd forbids in-place changes to a custom op's output that is a view (e.g. ReLU(inplace))
    x, weight, bias = _inputs(n, cin, cout, cin // cg, h=3, w=3)
    for b in (None, bias):
        w = weight.clone().requires_grad_()
        with forward_impl(forward):
            y = scc_conv2d(x, w, b, cg=cg, co=co)
            assert y._base is None
            torch.relu_(y).sum().backward()
        expected = torch.relu(scc_reference(x, weight, b, cg=cg, co=co))
        torch.testing.assert_close(y.detach(), expected, atol=1e-10, rtol=0)
        assert w.grad is not None


@pytest.mark.torch_path
def test_forced_forward_rejects_unknown_kind_and_restores_the_rule():
    geom = torch_path.geometry_for(torch.empty(1, 16, 1, 1), torch.empty(16, 4), 4, 0.5)
    chosen = torch_path.uses_masked_dense(geom)
    with pytest.raises(ValueError, match="kind must be"):
        with torch_path.forced_forward("fast"):
            pass
    with torch_path.forced_forward("windows"):
        assert not torch_path.uses_masked_dense(geom)
    with torch_path.forced_forward("masked_dense"):
        assert torch_path.uses_masked_dense(geom)
    assert torch_path.uses_masked_dense(geom) == chosen


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(layout):
    """torch.library's own checks of the registration: schema, fake kernel, autograd, AOT dispatch."""
    x, weight, bias = _inputs(2, 16, 24, 4, dtype=torch.float32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight.requires_grad_()
    torch.library.opcheck(torch.ops.scc.scc_conv2d.default, (x, weight, bias, 4, 0.5, None))
    gy = torch.randn(2, 24, 5, 4)
    torch.library.opcheck(torch.ops.scc.scc_conv2d_backward.default, (gy, x, weight.detach(), 4, 0.5, None, True, True))
