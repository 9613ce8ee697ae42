"""Every invalid input raises a Python exception naming the argument (and, where there is
one, the sample, the position and the offending value). Nothing crashes or reads junk."""

from __future__ import annotations

import re

import fastctc
import numpy as np
import pytest
from reference import log_softmax

T, N, C, S = 8, 3, 5, 4


def valid_inputs():
    lp = log_softmax(np.random.default_rng(0).normal(size=(T, N, C)))
    targets = np.array([[1, 2, 3, 4], [2, 2, 1, 0], [4, 3, 0, 0]])
    return {
        "log_probs": lp,
        "targets": targets,
        "input_lengths": np.array([8, 8, 6]),
        "target_lengths": np.array([4, 3, 2]),
    }


@pytest.fixture(params=["ctc_loss", "ctc_loss_and_grad"])
def func(request):
    return getattr(fastctc, request.param)


def call(func, **overrides):
    kwargs = valid_inputs()
    kwargs.update(overrides)
    return func(
        kwargs.pop("log_probs"),
        kwargs.pop("targets"),
        kwargs.pop("input_lengths"),
        kwargs.pop("target_lengths"),
        **kwargs,
    )


def check(exc_type, func, patterns, **overrides):
    """Calls ``func`` with ``overrides``; expects ``exc_type`` and every regex in the message."""
    with pytest.raises(exc_type) as info:
        call(func, **overrides)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message, re.IGNORECASE), f"{pattern!r} not in {message!r}"
    return message


def input_error(func, *patterns, **overrides):
    check(fastctc.CTCInputError, func, patterns, **overrides)


def type_error(func, *patterns, **overrides):
    check(fastctc.CTCTypeError, func, patterns, **overrides)


def sample(n):
    return rf"sample\W*{n}\b"


def position(p):
    return rf"position\W*{p}\b"


# --------------------------------------------------------------------------------------


def test_exception_hierarchy():
    assert issubclass(fastctc.CTCInputError, ValueError)
    assert issubclass(fastctc.CTCTypeError, TypeError)


def test_valid_inputs_are_valid(func):
    call(func)  # the baseline every other test perturbs


# log_probs


@pytest.mark.parametrize("shape", [(T, N, C, 1), (1, T, N, C, 1)])
def test_log_probs_too_many_dims_names_received_shape(func, shape):
    lp = np.zeros(shape)
    shape_text = re.escape(str(shape))
    input_error(func, "log_probs", shape_text, log_probs=lp)


@pytest.mark.parametrize("shape", [(T,), ()])
def test_log_probs_too_few_dims(func, shape):
    input_error(func, "log_probs", log_probs=np.zeros(shape))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16, np.bool_, np.complex128])
def test_log_probs_bad_dtype(func, dtype):
    lp = valid_inputs()["log_probs"].astype(dtype)
    type_error(func, "log_probs", log_probs=lp)


def test_log_probs_zero_frames(func):
    input_error(
        func,
        "log_probs",
        log_probs=np.zeros((0, N, C)),
        input_lengths=[0, 0, 0],
        target_lengths=[0, 0, 0],
    )


def test_log_probs_zero_batch(func):
    input_error(
        func,
        "log_probs",
        log_probs=np.zeros((T, 0, C)),
        targets=np.zeros((0, S), dtype=np.int64),
        input_lengths=np.zeros(0, dtype=np.int64),
        target_lengths=np.zeros(0, dtype=np.int64),
    )


def test_log_probs_zero_classes(func):
    input_error(func, "log_probs", log_probs=np.zeros((T, N, 0)), target_lengths=[0, 0, 0])


def test_unbatched_log_probs_zero_frames(func):
    input_error(
        func,
        "log_probs",
        log_probs=np.zeros((0, C)),
        targets=np.array([1]),
        input_lengths=0,
        target_lengths=0,
    )


# targets


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float_targets(func, dtype):
    type_error(func, "targets", targets=valid_inputs()["targets"].astype(dtype))


def test_label_too_large(func):
    targets = valid_inputs()["targets"].copy()
    targets[1, 2] = 7
    input_error(func, "targets", sample(1), position(2), r"\b7\b", targets=targets)


def test_label_equal_to_num_classes(func):
    targets = valid_inputs()["targets"].copy()
    targets[0, 3] = C
    input_error(func, "targets", sample(0), position(3), rf"\b{C}\b", targets=targets)


def test_label_negative(func):
    targets = valid_inputs()["targets"].copy()
    targets[2, 1] = -3
    input_error(func, "targets", sample(2), position(1), r"-3\b", targets=targets)


@pytest.mark.parametrize("value", [2**40, 2**62, -(2**40)])
def test_label_huge(func, value):
    targets = valid_inputs()["targets"].copy()
    targets[1, 0] = value
    input_error(func, "targets", sample(1), position(0), targets=targets)


def test_label_huge_unsigned(func):
    targets = valid_inputs()["targets"].astype(np.uint64)
    targets[1, 1] = np.iinfo(np.uint64).max
    input_error(func, "targets", sample(1), position(1), targets=targets)


def test_blank_inside_target(func):
    targets = valid_inputs()["targets"].copy()
    targets[0, 3] = 0
    input_error(func, "targets", sample(0), position(3), targets=targets)


def test_nonzero_blank_inside_target(func):
    # blank = 2 (written -3); only sample 1 = [4, 2, 1] contains a 2
    targets = np.array([[1, 3, 3, 4], [4, 2, 1, 0], [4, 3, 2, 2]])
    input_error(func, "targets", sample(1), position(1), blank=-3, targets=targets)


def test_bad_label_in_concatenated_targets(func):
    """In the 1-D form the position is counted within the sample's own target."""
    flat = np.array([1, 2, 3, 4, 2, 2, 9, 4, 3])  # sample 1 = [2, 2, 9]
    input_error(func, "targets", sample(1), position(2), r"\b9\b", targets=flat)


def test_blank_in_concatenated_targets(func):
    flat = np.array([1, 2, 3, 4, 2, 2, 1, 0, 3])  # sample 2 = [0, 3]
    input_error(func, "targets", sample(2), position(0), targets=flat)


@pytest.mark.parametrize("length", [8, 10, 0])
def test_concatenated_length_mismatch(func, length):
    flat = np.ones(length, dtype=np.int64)  # sum(target_lengths) = 9
    input_error(func, "targets", targets=flat)


def test_targets_rows_mismatch(func):
    targets = valid_inputs()["targets"][:2]
    input_error(func, "targets", targets=targets)


def test_targets_too_many_dims(func):
    targets = valid_inputs()["targets"][:, :, None]
    input_error(func, "targets", targets=targets)


def test_unbatched_targets_2d(func):
    input_error(
        func,
        "targets",
        log_probs=valid_inputs()["log_probs"][:, 0],
        targets=np.array([[1, 2]]),
        input_lengths=8,
        target_lengths=2,
    )


# input_lengths


def test_negative_input_length(func):
    input_error(func, "input_lengths", sample(1), r"-1\b", input_lengths=np.array([8, -1, 6]))


def test_input_length_exceeds_frames(func):
    input_error(func, "input_lengths", sample(1), r"\b9\b", input_lengths=np.array([8, 9, 6]))


def test_input_length_huge(func):
    input_error(func, "input_lengths", sample(2), input_lengths=np.array([8, 8, 2**40]))


@pytest.mark.parametrize("lengths", [[8, 8], [8, 8, 6, 6], []])
def test_input_lengths_batch_mismatch(func, lengths):
    input_error(func, "input_lengths", input_lengths=np.array(lengths, dtype=np.int64))


def test_input_lengths_wrong_ndim(func):
    input_error(func, "input_lengths", input_lengths=np.array([[8, 8, 6]]))


def test_float_input_lengths(func):
    type_error(func, "input_lengths", input_lengths=np.array([8.0, 8.0, 6.0]))


def test_unbatched_input_length_too_large(func):
    input_error(
        func,
        "input_lengths",
        r"\b9\b",
        log_probs=valid_inputs()["log_probs"][:, 0],
        targets=np.array([1, 2]),
        input_lengths=9,
        target_lengths=2,
    )


# target_lengths


def test_negative_target_length(func):
    input_error(func, "target_lengths", sample(1), r"-2\b", target_lengths=np.array([4, -2, 2]))


def test_target_length_exceeds_padded_width(func):
    input_error(func, "target_lengths", sample(1), r"\b5\b", target_lengths=np.array([4, 5, 2]))


@pytest.mark.parametrize("lengths", [[4, 3], [4, 3, 2, 1]])
def test_target_lengths_batch_mismatch(func, lengths):
    input_error(func, "target_lengths", target_lengths=np.array(lengths))


def test_float_target_lengths(func):
    type_error(func, "target_lengths", target_lengths=np.array([4.0, 3.0, 2.0]))


# options


@pytest.mark.parametrize("reduction", ["avg", "MEAN", ""])
def test_unknown_reduction(func, reduction):
    patterns = ["reduction"] + ([re.escape(reduction)] if reduction else [])
    input_error(func, *patterns, reduction=reduction)


@pytest.mark.parametrize("grad_wrt", ["logit", "probs", ""])
def test_unknown_grad_wrt(grad_wrt):
    patterns = ["grad_wrt"] + ([re.escape(grad_wrt)] if grad_wrt else [])
    input_error(fastctc.ctc_loss_and_grad, *patterns, grad_wrt=grad_wrt)


@pytest.mark.parametrize("blank", [C, C + 3, -C - 1, 2**40, 2**70, -(2**70)])
def test_blank_out_of_range(func, blank):
    input_error(func, "blank", re.escape(str(blank)), blank=blank)


def test_blank_not_an_integer(func):
    with pytest.raises(TypeError, match="(?i)blank"):
        call(func, blank=1.5)


@pytest.mark.parametrize("device", ["tpu", "cuda:7", ""])
def test_unknown_device(func, device):
    input_error(func, "device", device=device)


# --------------------------------------------------------------------------------------


def test_errors_leave_the_library_usable(func):
    """After a rejected call, a valid call still gives the right answer."""
    good = call(fastctc.ctc_loss, reduction="sum")
    targets = valid_inputs()["targets"].copy()
    targets[1, 2] = 99
    with pytest.raises(fastctc.CTCInputError):
        call(func, targets=targets)
    np.testing.assert_array_equal(call(fastctc.ctc_loss, reduction="sum"), good)


# --------------------------------------------------------------------------------------
# memory: buffers no machine has are refused before anything is computed (Rust would abort
# the process on a failed allocation)


def _broadcast_log_probs(T, N, C, dtype=np.float32):
    """A (T, N, C) view of one row: no memory of its own, however large its shape."""
    row = np.log(np.full((1, 1, C), 1.0 / C, dtype=dtype))
    return np.broadcast_to(row, (T, N, C))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("entry", ["ctc_loss_and_grad", "ctc_posteriors"])
def test_a_gradient_no_machine_holds_is_a_memory_error(entry, dtype):
    lp = _broadcast_log_probs(10**6, 1000, 1000, dtype)  # a 4-8 TB gradient
    args = (lp, np.ones((1000, 1), dtype=np.int64), np.full(1000, 2), np.full(1000, 1))
    with pytest.raises(MemoryError, match=r"not enough memory: the gradient needs [0-9.]+ GiB"):
        getattr(fastctc, entry)(*args)


def test_a_forward_table_no_machine_holds_is_a_memory_error():
    # One sample of 10^6 frames and 10^5 labels: a 1.6 TB forward table, a small gradient.
    lp = _broadcast_log_probs(10**6, 1, 3)
    targets = np.tile([1, 2], 50_000)[np.newaxis, :]
    with pytest.raises(MemoryError, match="the forward table of the longest sample"):
        fastctc.ctc_loss_and_grad(lp, targets, [10**6], [10**5])


def test_alignment_outputs_no_machine_holds_are_a_memory_error():
    lp = _broadcast_log_probs(10**7, 10**5, 2)  # (N, T) outputs of 10^12 entries
    args = (lp, np.ones((10**5, 1), dtype=np.int64), np.full(10**5, 2), np.full(10**5, 1))
    with pytest.raises(MemoryError, match="not enough memory"):
        fastctc.ctc_align(*args)


def test_a_large_broadcast_view_still_computes_its_loss():
    # ctc_loss keeps no gradient and no table: the same view computes (and matches a
    # dense copy of the first frames' worth).
    lp = _broadcast_log_probs(2000, 1000, 10)
    targets = np.ones((1000, 1), dtype=np.int64)
    loss = fastctc.ctc_loss(lp, targets, np.full(1000, 20), np.full(1000, 1), reduction="none")
    dense = np.ascontiguousarray(lp[:20, :1])
    one = fastctc.ctc_loss(dense, targets[:1], [20], [1], reduction="none")
    np.testing.assert_allclose(loss, np.full(1000, one[0]), rtol=1e-6)
