"""Property tests: fastctc against the NumPy reference over randomly drawn problems.

Hypothesis draws the structure (shapes, blank, layout, dtypes, options) and a seed; the
values come from a NumPy generator seeded with it, so failures shrink and reproduce.
"""

from __future__ import annotations

import fastctc
import numpy as np
from ctc_cases import (
    LAYOUTS,
    LENGTH_KINDS,
    TARGET_DTYPES,
    as_lengths,
    assert_close_or_same_nonfinite,
    make_case,
    with_layout,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TOLERANCES = {
    # dtype: (loss rtol, loss atol, grad rtol, grad atol)
    np.float64: (1e-9, 1e-12, 1e-9, 1e-12),
    np.float32: (1e-5, 1e-5, 1e-5, 1e-5),
}


def junk_value(kind: str, dtype, num_classes: int, blank: int) -> int:
    """A padding value that must never be read, representable in ``dtype``."""
    info = np.iinfo(dtype)
    if kind == "zero":
        return 0
    if kind == "negative":
        return -1 if info.min < 0 else int(info.max)
    if kind == "huge":
        return int(info.max)
    if kind == "num_classes":
        return num_classes
    if kind == "blank":
        return blank % num_classes
    raise ValueError(kind)


@st.composite
def problems(draw, max_frames=12, max_batch=4, max_classes=6, max_width=6, min_size=None):
    # min_size: lower bounds for (T, N, C, S); defaults to the smallest valid problems.
    min_frames, min_batch, min_classes, min_width = min_size or (1, 1, 1, 0)
    num_frames = draw(st.integers(min_frames, max_frames))
    batch = draw(st.integers(min_batch, max_batch))
    num_classes = draw(st.integers(min_classes, max_classes))
    width = draw(st.integers(min_width, max_width))
    blank = draw(st.integers(-num_classes, num_classes - 1))
    return {
        "num_frames": num_frames,
        "batch": batch,
        "num_classes": num_classes,
        "width": width,
        "blank": blank,
        "feasible": draw(st.booleans()),
        "full_targets": draw(st.booleans()),
        "values": draw(st.sampled_from(["log_softmax", "unnormalised", "neg_inf"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "form": draw(st.sampled_from(["padded", "concatenated"])),
        "junk": draw(st.sampled_from(["zero", "negative", "huge", "num_classes", "blank"])),
        "target_dtype": draw(st.sampled_from(TARGET_DTYPES)),
        "length_kind": draw(st.sampled_from(LENGTH_KINDS)),
        "reduction": draw(st.sampled_from(["none", "sum", "mean"])),
        "zero_infinity": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "layout": draw(st.sampled_from(LAYOUTS)),
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
    dtype = np.dtype(p["target_dtype"])
    if p["form"] == "padded":
        pad = junk_value(p["junk"], dtype, p["num_classes"], p["blank"])
        targets = case.padded(pad, dtype=dtype)
    else:
        targets = case.concatenated(dtype=dtype)
    lp = with_layout(case.log_probs.astype(p["dtype"]), p["layout"])
    il = as_lengths(case.input_lengths, p["length_kind"])
    tl = as_lengths(case.target_lengths, p["length_kind"])
    return case, lp, targets, il, tl


def check_against_reference(p, case, lp, targets, il, tl):
    # The reference sees exactly the values fastctc sees (float32 values cast up).
    ref = case.reference(p["reduction"], p["zero_infinity"], log_probs=np.asarray(lp))
    loss_rtol, loss_atol, grad_rtol, grad_atol = TOLERANCES[p["dtype"]]
    options = {
        "blank": p["blank"],
        "reduction": p["reduction"],
        "zero_infinity": p["zero_infinity"],
    }

    loss = fastctc.ctc_loss(lp, targets, il, tl, **options)
    assert loss.dtype == p["dtype"]
    assert_close_or_same_nonfinite(loss, ref.loss, loss_rtol, loss_atol, "ctc_loss")

    for grad_wrt, expected in (("log_probs", ref.grad_log_probs), ("logits", ref.grad_logits)):
        loss2, grad = fastctc.ctc_loss_and_grad(lp, targets, il, tl, grad_wrt=grad_wrt, **options)
        assert loss2.dtype == p["dtype"] and grad.dtype == p["dtype"]
        assert grad.shape == lp.shape and grad.flags.c_contiguous
        assert_close_or_same_nonfinite(loss2, ref.loss, loss_rtol, loss_atol, "loss")
        assert_close_or_same_nonfinite(grad, expected, grad_rtol, grad_atol, f"grad {grad_wrt}")


@SETTINGS
@given(problems())
def test_matches_reference(p):
    check_against_reference(p, *build(p))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_frames=50, max_batch=6, max_classes=30, max_width=20, min_size=(10, 2, 4, 4)))
def test_matches_reference_larger(p):
    check_against_reference(p, *build(p))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_unbatched_matches_reference(p):
    case, lp, _, _, _ = build(p)
    lp2 = np.asarray(lp)[:, 0, :]
    target = case.padded(0)[0]
    il, tl = int(case.input_lengths[0]), int(case.target_lengths[0])
    ref = case.reference("none", p["zero_infinity"], log_probs=lp)
    scale = 1.0 / max(tl, 1) if p["reduction"] == "mean" else 1.0
    loss_rtol, loss_atol, grad_rtol, grad_atol = TOLERANCES[p["dtype"]]
    loss, grad = fastctc.ctc_loss_and_grad(
        lp2,
        target,
        il,
        tl,
        blank=p["blank"],
        reduction=p["reduction"],
        zero_infinity=p["zero_infinity"],
    )
    assert loss.shape == () and grad.shape == lp2.shape
    assert_close_or_same_nonfinite(loss, ref.loss[0] * scale, loss_rtol, loss_atol, "loss")
    expected = ref.grad_log_probs[:, 0, :] * scale
    assert_close_or_same_nonfinite(grad, expected, grad_rtol, grad_atol, "grad")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_forms_and_layouts_give_identical_results(p):
    """Padded vs concatenated targets, any memory layout, any length type: same bits."""
    case, lp, targets, il, tl = build(p)
    options = {
        "blank": p["blank"],
        "reduction": p["reduction"],
        "zero_infinity": p["zero_infinity"],
    }
    got = fastctc.ctc_loss_and_grad(lp, targets, il, tl, **options)
    canonical = fastctc.ctc_loss_and_grad(
        np.ascontiguousarray(lp),
        case.padded(0),
        case.input_lengths,
        case.target_lengths,
        **options,
    )
    np.testing.assert_array_equal(got[0], canonical[0])
    np.testing.assert_array_equal(got[1], canonical[1])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_gradient_conventions_differ_by_scaled_probabilities(p):
    """logits-grad - log_probs-grad = scale_n * exp(log_probs) on valid, finite frames."""
    case, lp, targets, il, tl = build(p)
    options = {
        "blank": p["blank"],
        "reduction": p["reduction"],
        "zero_infinity": p["zero_infinity"],
    }
    losses = fastctc.ctc_loss(lp, targets, il, tl, blank=p["blank"], reduction="none")
    _, g_lp = fastctc.ctc_loss_and_grad(lp, targets, il, tl, grad_wrt="log_probs", **options)
    _, g_lo = fastctc.ctc_loss_and_grad(lp, targets, il, tl, grad_wrt="logits", **options)
    batch = lp.shape[1]
    for n in range(batch):
        length = int(case.input_lengths[n])
        if p["reduction"] == "mean":
            scale = 1.0 / (batch * max(int(case.target_lengths[n]), 1))
        else:
            scale = 1.0
        if not np.isfinite(losses[n]):
            continue
        diff = g_lo[:length, n].astype(np.float64) - g_lp[:length, n].astype(np.float64)
        expected = scale * np.exp(np.asarray(lp)[:length, n].astype(np.float64))
        rtol, atol = (1e-12, 1e-14) if p["dtype"] == np.float64 else (1e-5, 1e-5)
        np.testing.assert_allclose(diff, expected, rtol=rtol, atol=atol)
