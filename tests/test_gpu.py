"""The GPU backend (``device="gpu"``) against the CPU backend.

Without a GPU adapter these tests are skipped, unless ``FASTCTC_REQUIRE_GPU=1`` (as in CI,
which runs them on Mesa's software Vulkan driver, lavapipe), which makes a missing adapter a
failure. ``WGPU_BACKEND`` / ``WGPU_ADAPTER_NAME`` choose the backend and adapter they run on.

Tolerances, float32: losses within 1e-5 relative; gradients within 1e-5 absolute, whatever
T. The GPU runs the float32 recursion in log space with every stored value split into an
integer part and a remainder, so that rounding is relative to the remainder, not to the
value (docs/design.md#gpu-numerics): the gradient is within about 1e-6 of float64 at T = 5000,
S = 1000 (measured on lavapipe: 6e-7 at T = 500, 7e-7 at T = 1500, 1.2e-6 at T = 5000; the
CPU, float32 mantissas with an int32 exponent per state, gets 3e-7 to 7e-7). The
long-input tests hold the GPU to 1e-5 of the CPU and 1e-4 of float64 at T = 5000. (Plain
float32 log values, as before, rounded states hundreds of nats below a row's maximum, where
the posterior lies in long inputs, to an ulp of 3e-5 and more: 1e-4 to 9e-4 at T = 5000.)
float64 runs in float64 shaders where the adapter has them (lavapipe does), within 1e-9.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import fastctc
import numpy as np
import pytest
from ctc_cases import LAYOUTS, assert_close_or_same_nonfinite, make_case, with_layout
from fastctc import _core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REQUIRE = os.environ.get("FASTCTC_REQUIRE_GPU", "") == "1"


def _info():
    info = fastctc.gpu_info()
    if info is None:
        message = "no GPU adapter (install mesa-vulkan-drivers libvulkan1 for lavapipe)"
        if REQUIRE:
            pytest.fail(f"FASTCTC_REQUIRE_GPU=1 but {message}", pytrace=False)
        pytest.skip(message)
    return info


@pytest.fixture(scope="module", autouse=True)
def gpu():
    """The adapter's description; every test in this module needs one."""
    return _info()


TOLERANCES = {
    # dtype: (loss rtol, loss atol, grad rtol, grad atol). The gradient's relative part only
    # matters for entries far above 1: exp(log_probs) of unnormalised input with
    # grad_wrt="logits", where the two backends' exp differ by an ulp or two.
    np.float32: (1e-5, 1e-5, 1e-6, 1e-5),
    np.float64: (1e-9, 1e-12, 1e-12, 1e-9),
}


def both(func, *args, **kwargs):
    """``func`` on the CPU and on the GPU."""
    return func(*args, **kwargs, device="cpu"), func(*args, **kwargs, device="gpu")


def assert_same(cpu, gpu, dtype, what="", grad_atol=None):
    loss_rtol, loss_atol, grad_rtol, default_grad_atol = TOLERANCES[dtype]
    if isinstance(cpu, tuple):
        assert_close_or_same_nonfinite(gpu[0], cpu[0], loss_rtol, loss_atol, f"{what} loss")
        assert gpu[1].dtype == cpu[1].dtype and gpu[1].shape == cpu[1].shape
        assert gpu[1].flags.c_contiguous
        atol = default_grad_atol if grad_atol is None else grad_atol
        assert_close_or_same_nonfinite(gpu[1], cpu[1], grad_rtol, atol, f"{what} grad")
    else:
        assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
        assert_close_or_same_nonfinite(gpu, cpu, loss_rtol, loss_atol, f"{what} loss")


def random_batch(rng, T, N, C, S, dtype=np.float32, scale=2.0):
    logits = rng.standard_normal((T, N, C)) * scale
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    il = rng.integers(max(1, T // 2), T + 1, size=N)
    tl = np.minimum(rng.integers(0, S + 1, size=N), il // 2)
    targets = rng.integers(1, C, size=(N, S))
    return lp.astype(dtype), targets, il, tl


# --- the adapter ---------------------------------------------------------------------------


def test_gpu_info_describes_the_adapter(gpu):
    assert isinstance(gpu["name"], str) and gpu["name"]
    assert gpu["backend"] in ("vulkan", "metal", "dx12", "gl")
    assert gpu["device_type"] in ("discrete", "integrated", "virtual", "cpu", "other")
    assert isinstance(gpu["shader_f64"], bool)
    assert gpu["workgroup_size"] in (32, 64, 128, 256, 512, 1024)
    limits = gpu["limits"]
    assert limits["max_storage_buffer_binding_size"] >= 1 << 20
    assert limits["max_compute_workgroups_per_dimension"] >= 1
    assert fastctc.gpu_info() == gpu  # created once, reused


# --- parity on the property-test space ------------------------------------------------------


@st.composite
def problems(draw, max_frames=12, max_batch=4, max_classes=6, max_width=6):
    num_classes = draw(st.integers(1, max_classes))
    return {
        "num_frames": draw(st.integers(1, max_frames)),
        "batch": draw(st.integers(1, max_batch)),
        "num_classes": num_classes,
        "width": draw(st.integers(0, max_width)),
        "blank": draw(st.integers(-num_classes, num_classes - 1)),
        "feasible": draw(st.booleans()),
        "full_targets": draw(st.booleans()),
        "values": draw(st.sampled_from(["log_softmax", "unnormalised", "neg_inf"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "form": draw(st.sampled_from(["padded", "concatenated"])),
        "reduction": draw(st.sampled_from(["none", "sum", "mean"])),
        "zero_infinity": draw(st.booleans()),
        "grad_wrt": draw(st.sampled_from(["log_probs", "logits"])),
        "input_kind": draw(st.sampled_from(["log_probs", "logits"])),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "batch_major": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
    }


def build(p):
    rng = np.random.default_rng(p["seed"])
    case = make_case(
        rng,
        p["num_frames"],
        p["batch"],
        p["num_classes"],
        p["width"],
        blank=p["blank"],
        normalised=p["values"] != "unnormalised",
        feasible=p["feasible"],
        full_targets=p["full_targets"],
        neg_inf_fraction=0.2 if p["values"] == "neg_inf" else 0.0,
    )
    targets = case.padded(-1) if p["form"] == "padded" else case.concatenated()
    lp = case.log_probs.astype(p["dtype"])
    layout = "TNC"
    if p["batch_major"]:
        lp, layout = np.ascontiguousarray(lp.transpose(1, 0, 2)), "NTC"
    else:
        lp = with_layout(lp, p["layout"])
    options = {
        "blank": p["blank"],
        "reduction": p["reduction"],
        "zero_infinity": p["zero_infinity"],
        "input_kind": p["input_kind"],
        "layout": layout,
    }
    return case, lp, targets, options


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(problems())
def test_matches_cpu_on_the_property_space(gpu, p):
    if p["dtype"] == np.float64 and not gpu["shader_f64"]:
        p["dtype"] = np.float32
    case, lp, targets, options = build(p)
    il, tl = case.input_lengths, case.target_lengths
    assert_same(*both(fastctc.ctc_loss, lp, targets, il, tl, **options), p["dtype"], "loss")
    assert_same(
        *both(fastctc.ctc_loss_and_grad, lp, targets, il, tl, grad_wrt=p["grad_wrt"], **options),
        p["dtype"],
        "loss_and_grad",
    )
    post_options = {k: v for k, v in options.items() if k != "reduction"}
    assert_same(
        *both(fastctc.ctc_posteriors, lp, targets, il, tl, **post_options), p["dtype"], "post"
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_frames=60, max_batch=8, max_classes=40, max_width=25))
def test_matches_cpu_on_larger_problems(gpu, p):
    p["dtype"] = np.float32
    case, lp, targets, options = build(p)
    il, tl = case.input_lengths, case.target_lengths
    assert_same(
        *both(fastctc.ctc_loss_and_grad, lp, targets, il, tl, grad_wrt=p["grad_wrt"], **options),
        np.float32,
    )


def test_unbatched_input(rng):
    lp, targets, il, tl = random_batch(rng, 20, 1, 5, 6)
    tl[0] = 4
    cpu, gpu = both(fastctc.ctc_loss_and_grad, lp[:, 0], targets[0], il[0], tl[0])
    assert gpu[0].shape == () and gpu[1].shape == lp[:, 0].shape
    assert_same(cpu, gpu, np.float32)


def test_a_recycled_buffer_gives_the_reference_gradient(gpu):
    """A freed gradient of 1 MiB or more is reused by the next call of its size
    (src/buffers.rs); the GPU path clears it before unpacking. The freed buffer is filled with
    NaN first, so rows left stale (frames past an input length, an empty sample) show up.
    float64 too where the adapter has float64 shaders."""
    rng = np.random.default_rng(41)
    case = make_case(rng, 40, 20, 400, 15, min_input_length=10)
    case.input_lengths[0] = 0  # every frame of sample 0 is past its end
    case.targets[0] = []
    case.target_lengths[0] = 0
    dtypes = [np.float32, np.float64] if gpu["shader_f64"] else [np.float32]
    for dtype in dtypes:
        lp = case.log_probs.astype(dtype)
        args = (lp, case.padded(0), case.input_lengths, case.target_lengths)
        fastctc.empty_cache()
        try:
            _, stale = fastctc.ctc_loss_and_grad(*args, device="gpu")
            stale.fill(np.nan)
            where = stale.__array_interface__["data"][0]
            del stale
            loss, grad = fastctc.ctc_loss_and_grad(*args, device="gpu")
            assert grad.__array_interface__["data"][0] == where, "the buffer was not reused"
        finally:
            fastctc.empty_cache()
        ref = case.reference("mean", log_probs=lp)
        tol = 1e-5 if dtype == np.float32 else 1e-9
        np.testing.assert_allclose(loss, ref.loss, rtol=tol)
        np.testing.assert_allclose(grad, ref.grad_log_probs, rtol=0, atol=tol)


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.long
def test_long_targets(rng):
    """S = 1000 labels (2001 states): no cap on the target length."""
    lp, targets, _, _ = random_batch(rng, 1200, 2, 50, 1000)
    il = np.array([1200, 1100])
    tl = np.array([1000, 900])
    for grad_wrt in ("log_probs", "logits"):
        cpu, gpu = both(fastctc.ctc_loss_and_grad, lp, targets, il, tl, grad_wrt=grad_wrt)
        assert np.isfinite(gpu[0])
        assert_same(cpu, gpu, np.float32)


@pytest.mark.long
def test_long_inputs(rng):
    """T = 5000 frames: many spans of frames per sample (llvmpipe's loop limit), and the
    float32 recursion's rounding over 5000 frames (see the module docstring)."""
    lp, targets, _, _ = random_batch(rng, 5000, 2, 30, 100)
    il = np.array([5000, 4321])
    tl = np.array([100, 80])
    cpu, gpu = both(fastctc.ctc_loss_and_grad, lp, targets, il, tl, reduction="sum")
    assert_same(cpu, gpu, np.float32)
    _, g64 = fastctc.ctc_loss_and_grad(
        lp.astype(np.float64), targets, il, tl, reduction="sum", device="cpu"
    )
    assert np.abs(gpu[1] - g64).max() < 1e-4


@pytest.mark.long
@pytest.mark.parametrize(("classes", "scale"), [(39, 2.0), (3, 2.0), (39, 6.0)])
def test_long_alignment_against_float64(rng, classes, scale):
    """T = 5000 frames, S = 1000 labels: the posterior lies hundreds of nats below the alpha
    and beta rows' maxima, where plain float32 log values lost 1e-4 to 9e-4 (see the module
    docstring). Random labels, labels from 3 classes (many repeats, no skips), and peaked
    input (logits of scale 6)."""
    T, S = 5000, 1000
    lp, _, _, _ = random_batch(rng, T, 2, 40, 1, scale=scale)
    targets = rng.integers(1, classes + 1, size=(2, S))
    il = np.array([T, T - 37])
    tl = np.array([S, S - 5])
    loss, grad = fastctc.ctc_loss_and_grad(lp, targets, il, tl, reduction="sum", device="gpu")
    l64, g64 = fastctc.ctc_loss_and_grad(
        lp.astype(np.float64), targets, il, tl, reduction="sum", device="cpu"
    )
    assert abs(float(loss) - float(l64)) < 1e-6 * abs(float(l64))
    assert np.abs(grad - g64).max() < 1e-4


@pytest.mark.long
def test_batch_larger_than_a_storage_binding_is_chunked(gpu, rng):
    """160 MB of float32 input: more than lavapipe's 128 MiB storage-binding limit."""
    T, N, C = 200, 50, 4000
    lp, targets, il, tl = random_batch(rng, T, N, C, 20, scale=1.0)
    il[:] = T  # only frames within the input lengths are uploaded
    assert lp.nbytes > 128 << 20
    for kwargs in ({}, {"grad_wrt": "logits", "reduction": "none"}):
        cpu, out = both(fastctc.ctc_loss_and_grad, lp, targets, il, tl, **kwargs)
        assert_same(cpu, out, np.float32)
    if gpu["limits"]["max_storage_buffer_binding_size"] <= 128 << 20:
        *_, timings = _core.gpu_profile(
            lp,
            targets,
            il.astype(np.int64),
            tl.astype(np.int64),
            0,
            "mean",
            False,
            "log_probs",
            True,
        )
        assert timings["chunks"] >= 2


def _run_python(code, env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


PARITY_SCRIPT = """
    import numpy as np, fastctc
    rng = np.random.default_rng(0)
    T, N, C, S = {shape}
    x = rng.standard_normal((T, N, C))
    lp = (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)
    targets = rng.integers(1, C, size=(N, S))
    il = rng.integers(T // 2, T + 1, size=N)
    tl = rng.integers(0, S + 1, size=N)
    assert fastctc.gpu_info() is not None, "no adapter"
    for kind in ("log_probs", "logits"):
        cpu = fastctc.ctc_loss_and_grad(lp, targets, il, tl, input_kind=kind, reduction="none")
        gpu = fastctc.ctc_loss_and_grad(
            lp, targets, il, tl, input_kind=kind, reduction="none", device="gpu")
        assert np.allclose(gpu[0], cpu[0], rtol=1e-5), (gpu[0], cpu[0])
        assert np.abs(gpu[1] - cpu[1]).max() < {grad_atol}, np.abs(gpu[1] - cpu[1]).max()
    print("ok", fastctc.gpu_info()["backend"])
"""


@pytest.mark.long
def test_small_chunks_and_kept_rows():
    """With 64 kB buffers, every sample is its own chunk and keeps only every k-th alpha row,
    recomputing the others in the backward sweep; results do not change."""
    script = PARITY_SCRIPT.format(shape="300, 12, 40, 60", grad_atol=1e-5)
    result = _run_python(script, {"FASTCTC_GPU_CHUNK_BYTES": "65536"})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.long
@pytest.mark.parametrize("workgroup", ["64", "1024"])
def test_every_workgroup_size_gives_the_cpu_result(workgroup):
    """Workgroup sizes lavapipe does not default to (it takes 32): 1024 invocations cover a
    sample's 301 states at once, 64 loop over them; the same results."""
    script = PARITY_SCRIPT.format(shape="300, 6, 40, 150", grad_atol=2e-5)
    env = {"FASTCTC_GPU_WORKGROUP_SIZE": workgroup}
    result = _run_python(script, env)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.long
@pytest.mark.parametrize("backend", ["", "gl"])
def test_spans_cut_short_are_run_again(backend):
    """All 4000 frames in one span: llvmpipe cuts the loops short, the canary notices, and the
    chunk runs again with shorter spans (on a GPU without a loop limit, one span just works).
    """
    script = PARITY_SCRIPT.format(shape="4000, 2, 20, 40", grad_atol=1e-5)
    env = {"FASTCTC_GPU_SPAN_FRAMES": "1000000"}
    if backend:
        env["WGPU_BACKEND"] = backend
    result = _run_python(script, env)
    if backend and result.returncode != 0 and "no adapter" in result.stderr:
        pytest.skip(f"no {backend} adapter")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.long
def test_gl_backend(gpu):
    """The same kernels through wgpu's GL backend (Mesa llvmpipe through EGL on Linux)."""
    script = PARITY_SCRIPT.format(shape="300, 12, 40, 60", grad_atol=1e-5)
    result = _run_python(script, {"WGPU_BACKEND": "gl"})
    if result.returncode != 0 and "no adapter" in result.stderr:
        pytest.skip("no GL adapter")
    assert result.returncode == 0, result.stderr
    assert "ok gl" in result.stdout


# --- edge cases -----------------------------------------------------------------------------


EDGE_OPTIONS = [
    {"reduction": r, "zero_infinity": z, "grad_wrt": g}
    for r in ("none", "mean")
    for z in (False, True)
    for g in ("log_probs", "logits")
]


@pytest.mark.parametrize("options", EDGE_OPTIONS)
def test_edge_cases(rng, options):
    T, C = 8, 5
    lp, _, _, _ = random_batch(rng, T, 9, C, 4)
    targets = np.array(
        [
            [1, 2, 3, 4],  # ordinary
            [0, 0, 0, 0],  # empty target (padding never read)
            [1, 1, 1, 1],  # needs 7 frames; impossible with 5
            [2, 3, 0, 0],  # input length 0, target 2: impossible
            [0, 0, 0, 0],  # input length 0, empty target: loss 0
            [1, 2, 0, 0],  # NaN inside the band
            [3, 4, 0, 0],  # +inf read
            [1, 2, 3, 0],  # a frame of -inf: no path
            [2, 4, 0, 0],  # NaN in a class the target does not use
        ]
    )
    il = np.array([8, 8, 5, 0, 0, 8, 8, 8, 8])
    tl = np.array([4, 0, 4, 2, 0, 2, 2, 3, 2])
    lp[3, 5, 2] = np.nan
    lp[4, 6, 4] = np.inf
    lp[5, 7, :] = -np.inf
    lp[2, 8, 1] = np.nan
    lp[1, 0, 3] = -np.inf  # an isolated -inf on an ordinary sample
    cpu, gpu = both(fastctc.ctc_loss_and_grad, lp, targets, il, tl, **options)
    assert_same(cpu, gpu, np.float32)
    losses = fastctc.ctc_loss(lp, targets, il, tl, reduction="none", device="gpu")
    assert losses[4] == 0 and np.isnan(losses[5]) and np.isnan(losses[6])
    assert np.isinf(losses[2]) and np.isinf(losses[3]) and np.isinf(losses[7])
    grad = gpu[1]
    assert np.all(grad[5:, 2, :] == 0)  # frames past the input length
    assert np.all(grad[:, 3:5, :] == 0)  # no frames at all
    fill = 0 if options["zero_infinity"] else np.nan
    np.testing.assert_array_equal(grad[:5, 2, :], fill)  # no alignment
    assert grad[1, 0, 3] == 0 or options["grad_wrt"] == "logits"  # -inf entry


def test_logits_input_with_nan_anywhere_in_a_frame(rng):
    """Fused log_softmax: a NaN in any class of a frame makes the loss NaN, as on the CPU."""
    lp, targets, il, tl = random_batch(rng, 10, 3, 6, 3)
    il[:] = 10
    tl[:] = 2
    lp[4, 1, 5] = np.nan
    targets[:, :] = 1
    cpu, gpu = both(fastctc.ctc_loss_and_grad, lp, targets, il, tl, input_kind="logits")
    assert_same(cpu, gpu, np.float32)
    losses = fastctc.ctc_loss(
        lp, targets, il, tl, input_kind="logits", reduction="none", device="gpu"
    )
    assert np.isnan(losses[1]) and np.isfinite(losses[0])


def test_validation_runs_before_the_gpu(rng):
    lp, targets, il, tl = random_batch(rng, 6, 2, 4, 3)
    targets[1, 0] = 7
    tl[:] = 2
    with pytest.raises(fastctc.CTCInputError, match="sample 1"):
        fastctc.ctc_loss(lp, targets, il, tl, device="gpu")
    with pytest.raises(fastctc.CTCInputError, match="device"):
        fastctc.ctc_loss(lp, targets, il, tl, device="cuda")


# --- dtypes ---------------------------------------------------------------------------------


def test_float64(gpu, rng):
    lp, targets, il, tl = random_batch(rng, 40, 4, 8, 10, dtype=np.float64)
    if gpu["shader_f64"]:
        cpu, out = both(fastctc.ctc_loss_and_grad, lp, targets, il, tl, grad_wrt="logits")
        assert out[1].dtype == np.float64
        assert_same(cpu, out, np.float64)
    else:
        with pytest.raises(fastctc.CTCTypeError, match="float32.*device='cpu'"):
            fastctc.ctc_loss(lp, targets, il, tl, device="gpu")


@pytest.mark.long
def test_float64_without_shader_f64_is_refused():
    """GL has no 64-bit float shaders: float64 input is refused, never downcast."""
    code = """
        import numpy as np, fastctc
        info = fastctc.gpu_info()
        if info is None or info["shader_f64"]:
            print("skip")
        else:
            try:
                fastctc.ctc_loss(np.zeros((3, 1, 2)), [[1]], [3], [1], device="gpu")
            except fastctc.CTCTypeError as e:
                print("refused:", e)
    """
    result = _run_python(code, {"WGPU_BACKEND": "gl"})
    assert result.returncode == 0, result.stderr
    if "skip" in result.stdout:
        pytest.skip("the GL adapter has 64-bit float shaders, or there is none")
    assert "refused:" in result.stdout and "float32" in result.stdout
    assert "device='cpu'" in result.stdout


# --- no adapter -----------------------------------------------------------------------------


def test_no_adapter_raises_gpu_unavailable_error():
    """A backend with no adapter on this machine: GpuUnavailableError (a RuntimeError) saying
    what was tried and how to install a driver; gpu_info() is None."""
    backend = "metal" if sys.platform != "darwin" else "dx12"
    code = """
        import numpy as np, fastctc
        assert issubclass(fastctc.GpuUnavailableError, RuntimeError)
        print("info:", fastctc.gpu_info())
        try:
            fastctc.ctc_loss(np.zeros((3, 1, 2), np.float32), [[1]], [3], [1], device="gpu")
        except fastctc.GpuUnavailableError as e:
            print("raised:", e)
        # The CPU keeps working.
        print("cpu:", float(fastctc.ctc_loss(np.zeros((3, 1, 2)), [[1]], [3], [1])))
    """
    result = _run_python(code, {"WGPU_BACKEND": backend})
    assert result.returncode == 0, result.stderr
    assert "info: None" in result.stdout
    assert "raised:" in result.stdout
    message = result.stdout.split("raised:")[1]
    assert "tried" in message and "WGPU_BACKEND" in message
    assert "mesa-vulkan-drivers" in message and "device='cpu'" in message
    assert "cpu:" in result.stdout


# --- determinism and the GIL ----------------------------------------------------------------


def test_bitwise_deterministic(rng):
    lp, targets, il, tl = random_batch(rng, 120, 16, 30, 40)
    first = fastctc.ctc_loss_and_grad(lp, targets, il, tl, device="gpu")
    # Something else in between, with other buffer sizes.
    other = random_batch(rng, 50, 3, 7, 5)
    fastctc.ctc_loss_and_grad(*other, device="gpu")
    for _ in range(2):
        again = fastctc.ctc_loss_and_grad(lp, targets, il, tl, device="gpu")
        assert first[0].tobytes() == again[0].tobytes()
        assert first[1].tobytes() == again[1].tobytes()


def test_gil_is_released_during_gpu_calls(rng):
    lp, targets, il, tl = random_batch(rng, 600, 8, 30, 50)
    fastctc.ctc_loss_and_grad(lp, targets, il, tl, device="gpu")  # warm up
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=count)
    thread.start()
    try:
        start = time.perf_counter()
        fastctc.ctc_loss_and_grad(lp, targets, il, tl, device="gpu")
        end = time.perf_counter()
    finally:
        done.set()
        thread.join()
    during = [t for t in ticks if start < t < end]
    if end - start > 0.05:
        assert len(during) >= 3, (end - start, len(during))


def test_nan_after_every_path_died_gives_inf(rng):
    import test_semantics

    test_semantics.test_nan_after_every_path_died_gives_inf(rng, device="gpu")


def _gpu_loss_in_forked_child(args, queue) -> None:
    try:
        fastctc.ctc_loss(*args, device="gpu")
        queue.put(("no error", ""))
    except Exception as error:  # noqa: BLE001 (sent back to the test)
        queue.put((type(error).__name__, str(error)))


@pytest.mark.skipif(sys.platform == "win32", reason="needs the fork start method")
def test_a_forked_child_gets_an_error_not_a_hang():
    """A GPU device does not survive fork (using the inherited one hung): a forked child gets
    a clear RuntimeError; its CPU backend still works (tests/test_fork.py)."""
    import multiprocessing

    rng = np.random.default_rng(4)
    case = make_case(rng, 12, 3, 5, 4)
    args = (
        case.log_probs.astype(np.float32),
        case.padded(0),
        case.input_lengths,
        case.target_lengths,
    )
    fastctc.ctc_loss(*args, device="gpu")  # the parent has opened the device
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_gpu_loss_in_forked_child, args=(args, queue))
    child.start()
    try:
        kind, message = queue.get(timeout=120)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert kind == "RuntimeError"
    assert "fork" in message and "spawn" in message
