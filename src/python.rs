//! The Python binding (`fastctc._core`): NumPy arrays in, NumPy arrays out.
//!
//! This is the only file that knows Python. It converts arguments, calls the core with the
//! GIL released, and maps [`CtcError`] to exceptions in one place. It does no maths.

use ndarray::{ArrayD, Ix1, Ix2, IxDyn};
use numpy::{
    Element, IntoPyArray, PyArray3, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::cpu::CpuFloat;
use crate::error::{CtcError, ErrorKind};
use crate::options::{GradWrt, Options, Reduction};
use crate::problem::{validate, Targets};
use crate::{cpu, threads};

create_exception!(
    fastctc,
    CTCInputError,
    PyValueError,
    "An argument has a bad value: a length, a label, the blank, a shape, or an option."
);
create_exception!(
    fastctc,
    CTCTypeError,
    PyTypeError,
    "An argument has the wrong type or dtype (for example float targets)."
);

/// The one mapping from the crate's error to a Python exception.
fn to_py_err(error: CtcError) -> PyErr {
    match error.kind() {
        ErrorKind::Value => CTCInputError::new_err(error.to_string()),
    }
}

/// Runs `work` without the GIL. Every kernel goes through here; NumPy borrow guards stay
/// with the caller, outside the closure.
fn without_gil<T: Send>(py: Python<'_>, work: impl FnOnce() -> T + Send) -> T {
    py.detach(work)
}

type LossAndGrad<'py> = (Bound<'py, PyAny>, Option<Bound<'py, PyAny>>);

#[allow(clippy::too_many_arguments)]
fn run<'py, F: CpuFloat + Element>(
    py: Python<'py>,
    log_probs: &Bound<'py, PyArray3<F>>,
    targets: &PyReadonlyArrayDyn<'py, i64>,
    input_lengths: &PyReadonlyArray1<'py, i64>,
    target_lengths: &PyReadonlyArray1<'py, i64>,
    blank: i64,
    options: Options,
    with_grad: bool,
) -> PyResult<LossAndGrad<'py>> {
    let log_probs = log_probs.try_readonly()?;
    let targets_view = targets.as_array();
    let targets = match targets_view.ndim() {
        1 => Targets::Concatenated(
            targets_view
                .into_dimensionality::<Ix1>()
                .map_err(shape_bug)?,
        ),
        2 => Targets::Padded(
            targets_view
                .into_dimensionality::<Ix2>()
                .map_err(shape_bug)?,
        ),
        _ => {
            return Err(to_py_err(CtcError::Shape {
                argument: "targets",
                message: format!(
                    "expected (N, S) padded or 1-D concatenated targets, got shape {:?}",
                    targets.shape()
                ),
            }))
        }
    };
    let problem = validate(
        log_probs.as_array(),
        targets,
        input_lengths.as_array(),
        target_lengths.as_array(),
        blank,
        options,
    )
    .map_err(to_py_err)?;

    let output = without_gil(py, || cpu::compute(&problem, with_grad));

    let values: Vec<F> = output.loss_values().into_iter().map(F::from_f64).collect();
    let loss = match output.reduction {
        Reduction::None => ArrayD::from_shape_vec(IxDyn(&[values.len()]), values),
        Reduction::Sum | Reduction::Mean => ArrayD::from_shape_vec(IxDyn(&[]), values),
    }
    .map_err(shape_bug)?;
    let loss = loss.into_pyarray(py).into_any();
    let grad = output.grad.map(|g| g.into_pyarray(py).into_any());
    Ok((loss, grad))
}

fn shape_bug(error: ndarray::ShapeError) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("fastctc internal shape error: {error}"))
}

/// Computes CTC losses, and the gradient when `with_grad` is true.
///
/// Arguments arrive normalised by the Python layer: `log_probs` a 3-D float32/float64 array,
/// `targets` an int64 array (2-D padded or 1-D concatenated), lengths 1-D int64 arrays.
/// Returns `(loss, grad_or_None)`.
#[pyfunction]
#[pyo3(signature = (log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, grad_wrt, with_grad))]
#[allow(clippy::too_many_arguments)]
fn ctc<'py>(
    py: Python<'py>,
    log_probs: &Bound<'py, PyAny>,
    targets: PyReadonlyArrayDyn<'py, i64>,
    input_lengths: PyReadonlyArray1<'py, i64>,
    target_lengths: PyReadonlyArray1<'py, i64>,
    blank: i64,
    reduction: &str,
    zero_infinity: bool,
    grad_wrt: &str,
    with_grad: bool,
) -> PyResult<LossAndGrad<'py>> {
    let options = Options {
        reduction: Reduction::parse(reduction).map_err(to_py_err)?,
        zero_infinity,
        grad_wrt: GradWrt::parse(grad_wrt).map_err(to_py_err)?,
    };
    if let Ok(array) = log_probs.cast::<PyArray3<f32>>() {
        run(
            py,
            array,
            &targets,
            &input_lengths,
            &target_lengths,
            blank,
            options,
            with_grad,
        )
    } else if let Ok(array) = log_probs.cast::<PyArray3<f64>>() {
        run(
            py,
            array,
            &targets,
            &input_lengths,
            &target_lengths,
            blank,
            options,
            with_grad,
        )
    } else {
        Err(CTCTypeError::new_err(
            "log_probs: expected a 3-D NumPy array of dtype float32 or float64",
        ))
    }
}

/// Sets the number of worker threads for later calls.
#[pyfunction]
fn set_num_threads(threads: i64) -> PyResult<()> {
    let threads = usize::try_from(threads).map_err(|_| {
        CTCInputError::new_err(format!(
            "set_num_threads: the thread count must be at least 1, got {threads}"
        ))
    })?;
    threads::set_num_threads(threads).map_err(to_py_err)
}

/// The number of worker threads calls run on.
#[pyfunction]
fn get_num_threads() -> usize {
    threads::num_threads()
}

/// The CPU's SIMD extensions that fastctc detects at run time.
#[pyfunction]
fn simd_features() -> Vec<&'static str> {
    cpu::simd_features()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::VERSION)?;
    m.add("CTCInputError", m.py().get_type::<CTCInputError>())?;
    m.add("CTCTypeError", m.py().get_type::<CTCTypeError>())?;
    m.add_function(wrap_pyfunction!(ctc, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_features, m)?)?;
    Ok(())
}
