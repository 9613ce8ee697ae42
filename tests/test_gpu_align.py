"""Forced alignment on the GPU (``ctc_align(..., device="gpu")``) against the CPU aligner.

The two are independent implementations of the same max-product recursion (the CPU's in
``src/cpu/viterbi.rs``, the GPU's in ``src/gpu/viterbi.wgsl`` with the path traced on the
host), both in float64: paths, spans, per-frame scores and path scores must be *equal*, not
close, including the tie rule (few distinct input values make ties common here).

Without a GPU adapter these tests are skipped, unless ``FASTCTC_REQUIRE_GPU=1`` (as in CI, on
lavapipe), which makes a missing adapter a failure. The aligner needs 64-bit float shaders;
an adapter without them is tested to refuse (``WGPU_BACKEND=gl`` on Mesa).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import fastctc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REQUIRE = os.environ.get("FASTCTC_REQUIRE_GPU", "") == "1"


@pytest.fixture(scope="module", autouse=True)
def gpu():
    """The adapter's description; every test in this module needs one with SHADER_F64."""
    info = fastctc.gpu_info()
    if info is None:
        message = "no GPU adapter (install mesa-vulkan-drivers libvulkan1 for lavapipe)"
        if REQUIRE:
            pytest.fail(f"FASTCTC_REQUIRE_GPU=1 but {message}", pytrace=False)
        pytest.skip(message)
    if not info["shader_f64"]:
        pytest.skip(f"{info['name']} has no 64-bit float shaders, which the aligner needs")
    return info


def assert_same(cpu: fastctc.Alignment, gpu: fastctc.Alignment) -> None:
    """Every field equal (NaN where the other has NaN), dtypes and shapes included."""
    for name in ("labels", "scores", "spans", "path_scores", "ok"):
        a, b = getattr(gpu, name), getattr(cpu, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name, strict=True)


def both(*args, **kwargs) -> tuple[fastctc.Alignment, fastctc.Alignment]:
    cpu = fastctc.ctc_align(*args, **kwargs, device="cpu")
    gpu = fastctc.ctc_align(*args, **kwargs, device="gpu")
    assert_same(cpu, gpu)
    return cpu, gpu


def random_case(rng, T, N, C, S, *, blank=0, levels=None, star=False, dtype=np.float32):
    """A batch with free lengths (some inputs too short), repeats, and with ``levels`` values
    drawn from that many distinct levels (ties) rather than continuous ones."""
    if levels:
        lp = -rng.integers(0, levels, size=(T, N, C)) * 0.5
    else:
        lp = rng.standard_normal((T, N, C)) * 2.0
    lp = lp.astype(dtype)
    b = blank % C
    labels = [c for c in range(C) if c != b] + ([C] if star else [])
    targets = rng.choice(labels, size=(N, S)) if S else np.zeros((N, 0), dtype=np.int64)
    il = rng.integers(0, T + 1, size=N)
    tl = rng.integers(0, S + 1, size=N)
    return lp, targets, il, tl


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    T=st.integers(1, 24),
    N=st.integers(1, 4),
    C=st.integers(2, 6),
    S=st.integers(0, 9),
    blank=st.integers(-6, 5),
    levels=st.sampled_from([None, 2, 3]),
    dtype=st.sampled_from([np.float32, np.float64]),
    input_kind=st.sampled_from(["log_probs", "logits"]),
    layout=st.sampled_from(["TNC", "NTC"]),
    star=st.sampled_from([None, 0.0, -1.5]),
    neg_inf=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_cpu_on_the_property_space(
    T, N, C, S, blank, levels, dtype, input_kind, layout, star, neg_inf, seed
):
    rng = np.random.default_rng(seed)
    blank = blank % C if blank >= 0 else max(blank, -C)
    lp, targets, il, tl = random_case(
        rng, T, N, C, S, blank=blank, levels=levels, star=star is not None, dtype=dtype
    )
    if neg_inf:
        lp[rng.random(lp.shape) < 0.15] = -np.inf
    if layout == "NTC":
        lp = np.ascontiguousarray(lp.transpose(1, 0, 2))
    both(lp, targets, il, tl, blank, input_kind=input_kind, layout=layout, star_score=star)


def test_some_samples_align_and_some_cannot():
    """The sweep above is meaningful: with these sizes both outcomes occur."""
    rng = np.random.default_rng(1)
    lp, targets, il, tl = random_case(rng, 12, 64, 4, 8, levels=3)
    cpu, _ = both(lp, targets, il, tl)
    assert 5 < cpu.ok.sum() < 59


def test_edge_cases():
    rng = np.random.default_rng(2)
    lp = np.log(rng.dirichlet(np.ones(5), size=(7, 6))).astype(np.float32)
    targets = np.array([[1, 1, 1], [2, 3, 2], [4, 4, 0], [1, 2, 3], [3, 0, 0], [2, 0, 0]])
    il = np.array([7, 7, 2, 0, 0, 1])  # repeats need blanks; too short; no frames
    tl = np.array([3, 3, 2, 3, 0, 1])
    cpu, _ = both(lp, targets, il, tl)
    assert cpu.ok.tolist() == [True, True, False, False, True, True]
    # A repeat that needs every frame: 1 _ 1 _ 1.
    both(lp[:5, :1], [[1, 1, 1]], [5], [3])


def test_ties_prefer_the_highest_state_and_end_in_the_blank():
    lp = np.zeros((6, 1, 3), dtype=np.float64)  # every path scores 0
    cpu, _ = both(lp, [[1, 2]], [6], [2])
    # Advancing as early as possible, then staying in the final blank.
    assert cpu.labels[0].tolist() == [1, 2, 0, 0, 0, 0]


def test_nan_reads():
    rng = np.random.default_rng(3)
    lp, targets, il, tl = random_case(rng, 10, 6, 5, 3)
    il[:] = 10
    tl[:] = 3
    targets[:] = [1, 2, 3]
    lp[4, 0, 2] = np.nan  # a label's column, in the band: NaN
    lp[0, 1, 3] = np.nan  # frame 0 does not reach label 3's states: not read
    lp[5, 2, 4] = np.nan  # a class no target uses: not read
    lp[9, 3, 0] = np.nan  # the blank at the last frame
    cpu, _ = both(lp, targets, il, tl)
    assert np.isnan(cpu.path_scores[[0, 3]]).all()
    assert np.isfinite(cpu.path_scores[[1, 2]]).all()
    # With logits, a NaN anywhere in a frame reaches its log-sum-exp.
    both(lp, targets, il, tl, input_kind="logits")
    lp[6, 4, 1] = np.inf
    both(lp, targets, il, tl)
    both(lp, targets, il, tl, input_kind="logits")


def test_concatenated_targets_and_unbatched_input():
    rng = np.random.default_rng(4)
    lp, targets, il, tl = random_case(rng, 20, 3, 6, 5)
    flat = np.concatenate([targets[n, : tl[n]] for n in range(3)])
    both(lp, flat, il, tl)
    cpu, _ = both(lp[:, 0], targets[0, : tl[0]], int(il[0]), int(tl[0]))
    assert cpu.labels.shape == (1, 20)


def test_strided_input():
    rng = np.random.default_rng(5)
    lp, targets, il, tl = random_case(rng, 30, 4, 7, 6, blank=3)
    big = np.full((30, 4, 14), np.nan, dtype=np.float32)
    big[..., ::2] = lp
    both(big[..., ::2], targets, il, tl, blank=3)
    both(np.asfortranarray(lp), targets, il, tl, blank=3, input_kind="logits")


def test_long_targets_and_wide_batches():
    """Targets longer than a workgroup's invocations cover in one pass, and more samples
    than a chunk of small ones."""
    rng = np.random.default_rng(6)
    lp, targets, _, _ = random_case(rng, 700, 3, 40, 300)
    both(lp, targets, [700, 650, 601], [300, 299, 300])
    lp, targets, il, tl = random_case(rng, 15, 300, 5, 4, levels=3)
    both(lp, targets, il, tl, star_score=-0.5)


@pytest.mark.long
def test_long_alignment_t5000_s1000():
    rng = np.random.default_rng(7)
    T, S, C = 5000, 1000, 30
    x = rng.standard_normal((T, 2, C)).astype(np.float32)
    lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    targets = rng.integers(1, C, size=(2, S))
    cpu, _ = both(lp, targets, [T, T - 3], [S, S - 1])
    assert cpu.ok.all()
    both(x, targets, [T, T], [S, S], input_kind="logits")


def test_validation_runs_before_the_gpu():
    """Bad input raises what the CPU path raises, with the same message."""
    lp = np.full((6, 2, 4), -1.0, dtype=np.float32)
    cases = [
        dict(targets=[[1, 7], [1, 2]]),  # label out of range
        dict(targets=[[1, 0], [1, 2]]),  # the blank inside a target
        dict(targets=[[1, 4], [1, 2]]),  # the star's class without a star score
        dict(input_lengths=[7, 6]),  # input length past T
        dict(blank=9),
        dict(input_kind="probs"),
        dict(layout="CTN"),
        dict(star_score=float("nan"), targets=[[1, 4], [1, 2]]),
    ]
    for case in cases:
        args = dict(targets=[[1, 2], [3, 1]], input_lengths=[6, 6], target_lengths=[2, 2])
        args.update(case)
        errors = []
        for device in ("cpu", "gpu"):
            with pytest.raises(Exception) as info:
                fastctc.ctc_align(lp, device=device, **args)
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1], case
    with pytest.raises(fastctc.CTCInputError, match="device"):
        fastctc.ctc_align(lp, [[1]], [6], [1], device="cuda")


def test_a_sample_too_large_for_a_binding_is_refused(gpu):
    """Two-bit back-pointers of 70,000 frames x 8001 states take 140 MB: more than lavapipe's
    128 MiB storage binding. Refused before any work, suggesting the CPU."""
    T, S = 70_000, 4000
    needed = T * ((2 * S + 1 + 15) // 16) * 4
    if needed <= gpu["limits"]["max_storage_buffer_binding_size"]:
        pytest.skip("this adapter's storage bindings hold the sample")
    lp = np.full((T, 1, 5), -1.6, dtype=np.float32)
    targets = np.tile([1, 2], S // 2)[None]
    with pytest.raises(RuntimeError, match="sample 0.*device='cpu'"):
        fastctc.ctc_align(lp, targets, [T], [S], device="gpu")


def test_deterministic():
    rng = np.random.default_rng(8)
    lp, targets, il, tl = random_case(rng, 200, 8, 20, 40, levels=2)
    first = fastctc.ctc_align(lp, targets, il, tl, device="gpu")
    assert_same(first, fastctc.ctc_align(lp, targets, il, tl, device="gpu"))


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
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    targets = rng.integers(1, C, size=(N, S))
    il = rng.integers(T // 2, T + 1, size=N)
    tl = rng.integers(0, S + 1, size=N)
    assert fastctc.gpu_info() is not None, "no adapter"
    for kind in ("log_probs", "logits"):
        cpu = fastctc.ctc_align(x, targets, il, tl, input_kind=kind)
        gpu = fastctc.ctc_align(x, targets, il, tl, input_kind=kind, device="gpu")
        for name in ("labels", "scores", "spans", "path_scores", "ok"):
            np.testing.assert_array_equal(getattr(gpu, name), getattr(cpu, name), name)
        assert cpu.ok.sum() > N // 2
    print("ok", fastctc.gpu_info()["backend"])
"""


@pytest.mark.long
def test_small_chunks():
    """With 64 kB buffers each sample's emissions (300 frames x up to 40 columns x 8 bytes)
    take most of a chunk: the batch runs as several chunks, with the same result."""
    script = PARITY_SCRIPT.format(shape="300, 12, 40, 60")
    result = _run_python(script, {"FASTCTC_GPU_CHUNK_BYTES": "65536"})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.long
def test_spans_cut_short_are_run_again():
    """All 4000 frames in one span: llvmpipe cuts the loops short, the canary notices, and the
    chunk runs again with shorter spans (on a GPU without a loop limit, one span just works).
    """
    script = PARITY_SCRIPT.format(shape="4000, 2, 20, 40")
    result = _run_python(script, {"FASTCTC_GPU_SPAN_FRAMES": "1000000"})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.long
def test_adapter_without_float64_is_refused():
    """Mesa's GL driver has no 64-bit float shaders: the aligner refuses rather than round."""
    code = """
        import numpy as np, fastctc
        info = fastctc.gpu_info()
        if info is None or info["shader_f64"]:
            print("skip")
        else:
            try:
                fastctc.ctc_align(np.zeros((3, 1, 2), np.float32), [[1]], [3], [1], device="gpu")
            except RuntimeError as e:
                print("refused:", e)
    """
    result = _run_python(code, {"WGPU_BACKEND": "gl"})
    assert result.returncode == 0, result.stderr
    if "skip" in result.stdout:
        pytest.skip("the GL adapter has 64-bit float shaders, or there is none")
    assert "refused:" in result.stdout and "SHADER_F64" in result.stdout
    assert "device='cpu'" in result.stdout
