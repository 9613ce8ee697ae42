"""Type stubs for the native module ``fastctc._core`` (built from ``src/python.rs``)."""

from typing import Any

import numpy as np

__version__: str

class CTCInputError(ValueError):
    """An argument has a bad value: a length, a label, the blank, a shape, or an option."""

class CTCTypeError(TypeError):
    """An argument has the wrong type or dtype (for example float targets)."""

class GpuUnavailableError(RuntimeError):
    """device='gpu' but no usable GPU adapter: the message says what was tried and how to
    install a driver."""

def ctc(
    log_probs: np.ndarray,
    targets: np.ndarray,
    input_lengths: np.ndarray,
    target_lengths: np.ndarray,
    blank: int,
    reduction: str,
    zero_infinity: bool,
    grad_wrt: str,
    with_grad: bool,
    input_kind: str = "log_probs",
    layout: str = "TNC",
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Computes CTC losses (and the gradient when ``with_grad``) of a normalised batch."""

def posteriors(
    log_probs: np.ndarray,
    targets: np.ndarray,
    input_lengths: np.ndarray,
    target_lengths: np.ndarray,
    blank: int,
    zero_infinity: bool,
    input_kind: str = "log_probs",
    layout: str = "TNC",
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample losses and the posterior occupancy of a normalised batch."""

def align(
    log_probs: np.ndarray,
    targets: np.ndarray,
    input_lengths: np.ndarray,
    target_lengths: np.ndarray,
    blank: int,
    input_kind: str = "log_probs",
    star_score: float | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The best path of every sample: (labels, scores, spans, path_scores), computed on
    ``device`` ("cpu" or "gpu"; both give the same paths and scores)."""

def validate_batch(
    log_probs: np.ndarray,
    targets: np.ndarray,
    input_lengths: np.ndarray,
    target_lengths: np.ndarray,
    blank: int,
    reduction: str,
    zero_infinity: bool,
    device: str = "cpu",
) -> tuple[int, np.ndarray]:
    """Validates a normalised batch as ``ctc`` does, without reading ``log_probs``' values:
    returns the resolved blank and every sample's labels back to back (uint32)."""

def set_num_threads(threads: int) -> None:
    """Sets the number of worker threads for later calls (at least 1)."""

def get_num_threads() -> int:
    """The number of worker threads calls run on."""

def empty_cache() -> int:
    """Frees the gradient buffers and CPU workspaces kept for reuse; returns the bytes freed."""

def use_openmp_team(enabled: bool) -> bool:
    """Runs later batches on the calling thread's OpenMP team (``enabled``), or on fastctc's
    own pool; returns whether the process has an OpenMP runtime to run them on."""

def openmp_batches() -> int:
    """How many batches have run on an OpenMP team in this process."""

def simd_features() -> list[str]:
    """The CPU's SIMD extensions detected at run time."""

def gpu_info() -> dict[str, Any] | None:
    """The GPU adapter (name, backend, device type, driver, limits), or None."""

def gpu_profile(
    log_probs: np.ndarray,
    targets: np.ndarray,
    input_lengths: np.ndarray,
    target_lengths: np.ndarray,
    blank: int,
    reduction: str,
    zero_infinity: bool,
    grad_wrt: str,
    with_grad: bool,
    input_kind: str = "log_probs",
    layout: str = "TNC",
) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """``ctc(..., device="gpu")`` with each phase waited for and timed (benchmarks only)."""
