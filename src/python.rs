//! The Python binding (`fastctc._core`): NumPy arrays in, NumPy arrays out.
//!
//! This is the only file that knows Python. It converts arguments, calls the core with the
//! GIL released, and maps [`CtcError`] to exceptions in one place. It does no maths.

use ndarray::{Array3, ArrayD, ArrayView3, Ix1, Ix2, IxDyn};
use numpy::{
    Element, IntoPyArray, PyArray3, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::call::{self, Batch, Outcome};
use crate::error::{CtcError, ErrorKind};
use crate::options::{Device, GradWrt, InputKind, Job, Layout, Options, Reduction};
use crate::output::CtcOutput;
use crate::problem::Targets;
use crate::real::Real;
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
create_exception!(
    fastctc,
    GpuUnavailableError,
    PyRuntimeError,
    "device='gpu' but no usable GPU adapter: the message says what was tried and how to \
     install a driver."
);

/// The one mapping from the crate's error to a Python exception.
fn to_py_err(error: CtcError) -> PyErr {
    match error.kind() {
        ErrorKind::Value => CTCInputError::new_err(error.to_string()),
        ErrorKind::Type => CTCTypeError::new_err(error.to_string()),
        ErrorKind::GpuUnavailable => GpuUnavailableError::new_err(error.to_string()),
        ErrorKind::Runtime => PyRuntimeError::new_err(error.to_string()),
        ErrorKind::Memory => PyMemoryError::new_err(error.to_string()),
    }
}

/// A float type the binding takes: one the core computes in, and NumPy stores.
trait Float: crate::Float + Element {
    fn into_storage(buffer: Vec<Self>) -> Storage;
}

impl Float for f32 {
    fn into_storage(buffer: Vec<Self>) -> Storage {
        Storage::F32(buffer)
    }
}

impl Float for f64 {
    fn into_storage(buffer: Vec<Self>) -> Storage {
        Storage::F64(buffer)
    }
}

/// A gradient buffer of either float type.
enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Owns the memory of a gradient array handed to NumPy (its base object). When NumPy frees
/// the array, the buffer goes back to `crate::buffers` for the next call's gradient.
#[pyclass(frozen, module = "fastctc._core", name = "_GradientBuffer")]
struct GradientBuffer {
    storage: Option<Storage>,
}

impl Drop for GradientBuffer {
    fn drop(&mut self) {
        match self.storage.take() {
            Some(Storage::F32(buffer)) => crate::buffers::give_back(buffer),
            Some(Storage::F64(buffer)) => crate::buffers::give_back(buffer),
            None => {}
        }
    }
}

/// A gradient as a NumPy array whose memory is recycled once the array is freed.
fn gradient_array<'py, F: Float>(py: Python<'py>, grad: Array3<F>) -> PyResult<Bound<'py, PyAny>> {
    if !grad.is_standard_layout() {
        return Ok(grad.into_pyarray(py).into_any());
    }
    let shape = grad.raw_dim();
    let len = grad.len();
    let (mut buffer, offset) = grad.into_raw_vec_and_offset();
    let offset = offset.unwrap_or(0);
    if offset != 0 || buffer.len() != len {
        // An array over part of its buffer (the kernels never return one): keep that part.
        buffer = buffer[offset..offset + len].to_vec();
    }
    // The heap block does not move when the Vec moves into its owner.
    let data = buffer.as_ptr();
    let owner = Bound::new(
        py,
        GradientBuffer {
            storage: Some(F::into_storage(buffer)),
        },
    )?;
    // SAFETY: `data` points at `shape`'s product of initialised elements in standard layout,
    // owned by `owner`, which never touches them until it is dropped; NumPy keeps `owner`
    // alive (as the array's base object) as long as any view of the array exists.
    unsafe {
        let view = ArrayView3::from_shape_ptr(shape, data);
        Ok(PyArray3::borrow_from_array(&view, owner.into_any()).into_any())
    }
}

/// Runs `work` without the GIL. Every kernel goes through here; NumPy borrow guards stay
/// with the caller, outside the closure.
fn without_gil<T: Send>(py: Python<'_>, work: impl FnOnce() -> T + Send) -> T {
    py.detach(work)
}

fn targets_of<'a>(targets: &'a PyReadonlyArrayDyn<'_, i64>) -> PyResult<Targets<'a>> {
    let view = targets.as_array();
    match view.ndim() {
        1 => Ok(Targets::Concatenated(
            view.into_dimensionality::<Ix1>().map_err(shape_bug)?,
        )),
        2 => Ok(Targets::Padded(
            view.into_dimensionality::<Ix2>().map_err(shape_bug)?,
        )),
        _ => Err(to_py_err(CtcError::Shape {
            argument: "targets",
            message: format!(
                "expected (N, S) padded or 1-D concatenated targets, got shape {:?}",
                targets.shape()
            ),
        })),
    }
}

/// A loss array of the input dtype: `(N,)` for `"none"`, else 0-d.
fn loss_array<'py, F: Real + Element>(
    py: Python<'py>,
    values: Vec<f64>,
    per_sample: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let values: Vec<F> = values.into_iter().map(F::from_f64).collect();
    let shape = if per_sample {
        vec![values.len()]
    } else {
        vec![]
    };
    let array = ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(shape_bug)?;
    Ok(array.into_pyarray(py).into_any())
}

/// The arrays of a call, borrowed from NumPy (the borrows outlive the GIL-free section).
struct Arrays<'py> {
    targets: PyReadonlyArrayDyn<'py, i64>,
    input_lengths: PyReadonlyArray1<'py, i64>,
    target_lengths: PyReadonlyArray1<'py, i64>,
    blank: i64,
}

impl Arrays<'_> {
    /// The core's view of a call's data, with `log_probs` borrowed by the caller.
    fn batch<'a, F>(&'a self, log_probs: ArrayView3<'a, F>) -> PyResult<Batch<'a, F>> {
        Ok(Batch {
            log_probs,
            targets: targets_of(&self.targets)?,
            input_lengths: self.input_lengths.as_array(),
            target_lengths: self.target_lengths.as_array(),
            blank: self.blank,
        })
    }
}

/// The loss and its gradient (or `gamma`) as NumPy arrays.
fn losses_tuple<'py, F: Float>(
    py: Python<'py>,
    output: CtcOutput<F>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let per_sample = output.reduction == Reduction::None;
    let loss = loss_array::<F>(py, output.loss_values(), per_sample)?;
    let grad = match output.grad {
        Some(grad) => gradient_array(py, grad)?,
        None => py.None().into_bound(py),
    };
    Ok(vec![loss, grad])
}

/// Runs `job` through the core's one call path, without the GIL, and converts its outputs.
fn run<'py, F: Float>(
    py: Python<'py>,
    log_probs: &Bound<'py, PyArray3<F>>,
    arrays: &Arrays<'py>,
    options: Options,
    job: Job,
    device: Device,
) -> PyResult<Bound<'py, PyTuple>> {
    let log_probs = log_probs.try_readonly()?;
    let batch = arrays.batch(log_probs.as_array())?;
    let outcome = without_gil(py, || call::run(batch, options, job, device)).map_err(to_py_err)?;
    let items = match outcome {
        Outcome::Losses(output) => losses_tuple(py, output)?,
        Outcome::Alignment(output) => vec![
            output.labels.into_pyarray(py).into_any(),
            output.scores.into_pyarray(py).into_any(),
            output.spans.into_pyarray(py).into_any(),
            output.path_scores.into_pyarray(py).into_any(),
        ],
    };
    PyTuple::new(py, items)
}

/// Picks the float type of `log_probs` and runs `job`.
fn dispatch<'py>(
    py: Python<'py>,
    log_probs: &Bound<'py, PyAny>,
    arrays: &Arrays<'py>,
    options: Options,
    job: Job,
    device: Device,
) -> PyResult<Bound<'py, PyTuple>> {
    if let Ok(array) = log_probs.cast::<PyArray3<f32>>() {
        run(py, array, arrays, options, job, device)
    } else if let Ok(array) = log_probs.cast::<PyArray3<f64>>() {
        run(py, array, arrays, options, job, device)
    } else {
        Err(to_py_err(CtcError::LogProbsDtype {
            allowed: "float32 or float64",
        }))
    }
}

fn shape_bug(error: ndarray::ShapeError) -> PyErr {
    to_py_err(CtcError::Internal {
        message: format!("shape error: {error}"),
    })
}

/// The options of a loss call, from the strings the Python layer passes.
fn parse_options(
    reduction: &str,
    zero_infinity: bool,
    grad_wrt: &str,
    input_kind: &str,
    layout: &str,
) -> PyResult<Options> {
    Ok(Options {
        reduction: Reduction::parse(reduction).map_err(to_py_err)?,
        zero_infinity,
        grad_wrt: GradWrt::parse(grad_wrt).map_err(to_py_err)?,
        input_kind: InputKind::parse(input_kind).map_err(to_py_err)?,
        layout: Layout::parse(layout).map_err(to_py_err)?,
        star_score: None,
    })
}

/// Computes CTC losses, and the gradient when `with_grad` is true.
///
/// Arguments arrive normalised by the Python layer: `log_probs` a 3-D float32/float64 array,
/// `targets` an int64 array (2-D padded or 1-D concatenated), lengths 1-D int64 arrays.
/// Returns `(loss, grad_or_None)`. `device` is `"cpu"` or `"gpu"`.
#[pyfunction]
#[pyo3(signature = (log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, grad_wrt, with_grad, input_kind="log_probs", layout="TNC", device="cpu"))]
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
    input_kind: &str,
    layout: &str,
    device: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let device = Device::parse(device).map_err(to_py_err)?;
    let options = parse_options(reduction, zero_infinity, grad_wrt, input_kind, layout)?;
    let arrays = Arrays {
        targets,
        input_lengths,
        target_lengths,
        blank,
    };
    let job = if with_grad {
        Job::LossAndGrad
    } else {
        Job::Loss
    };
    dispatch(py, log_probs, &arrays, options, job, device)
}

/// Per-sample losses and the posterior occupancy `gamma`, `(losses, gamma)`.
#[pyfunction]
#[pyo3(signature = (log_probs, targets, input_lengths, target_lengths, blank, zero_infinity, input_kind="log_probs", layout="TNC", device="cpu"))]
#[allow(clippy::too_many_arguments)]
fn posteriors<'py>(
    py: Python<'py>,
    log_probs: &Bound<'py, PyAny>,
    targets: PyReadonlyArrayDyn<'py, i64>,
    input_lengths: PyReadonlyArray1<'py, i64>,
    target_lengths: PyReadonlyArray1<'py, i64>,
    blank: i64,
    zero_infinity: bool,
    input_kind: &str,
    layout: &str,
    device: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let device = Device::parse(device).map_err(to_py_err)?;
    let options = Options {
        reduction: Reduction::None,
        zero_infinity,
        grad_wrt: GradWrt::LogProbs,
        input_kind: InputKind::parse(input_kind).map_err(to_py_err)?,
        layout: Layout::parse(layout).map_err(to_py_err)?,
        star_score: None,
    };
    let arrays = Arrays {
        targets,
        input_lengths,
        target_lengths,
        blank,
    };
    dispatch(py, log_probs, &arrays, options, Job::Posteriors, device)
}

/// The best path of every sample: `(labels, scores, spans, path_scores)`.
#[pyfunction]
#[pyo3(signature = (log_probs, targets, input_lengths, target_lengths, blank, input_kind="log_probs", star_score=None, device="cpu"))]
#[allow(clippy::too_many_arguments)]
fn align<'py>(
    py: Python<'py>,
    log_probs: &Bound<'py, PyAny>,
    targets: PyReadonlyArrayDyn<'py, i64>,
    input_lengths: PyReadonlyArray1<'py, i64>,
    target_lengths: PyReadonlyArray1<'py, i64>,
    blank: i64,
    input_kind: &str,
    star_score: Option<f64>,
    device: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let device = Device::parse(device).map_err(to_py_err)?;
    let options = Options {
        input_kind: InputKind::parse(input_kind).map_err(to_py_err)?,
        star_score,
        ..Options::default()
    };
    let arrays = Arrays {
        targets,
        input_lengths,
        target_lengths,
        blank,
    };
    dispatch(py, log_probs, &arrays, options, Job::Align, device)
}

/// Validates a batch exactly as `ctc` does (the device and options, then the data), without
/// computing anything or reading `log_probs`' values: a broadcast view of the right shape and
/// dtype will do. Returns `(blank, labels)`: the blank in `[0, C)` and every sample's labels
/// back to back. The torch adapter's compact path checks the whole batch with it before it
/// gathers the columns the samples read, so that bad input raises what the dense path raises.
#[pyfunction]
#[pyo3(signature = (log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, device="cpu"))]
#[allow(clippy::too_many_arguments)]
fn validate_batch<'py>(
    py: Python<'py>,
    log_probs: &Bound<'py, PyAny>,
    targets: PyReadonlyArrayDyn<'py, i64>,
    input_lengths: PyReadonlyArray1<'py, i64>,
    target_lengths: PyReadonlyArray1<'py, i64>,
    blank: i64,
    reduction: &str,
    zero_infinity: bool,
    device: &str,
) -> PyResult<(usize, Bound<'py, PyAny>)> {
    Device::parse(device).map_err(to_py_err)?;
    let options = parse_options(reduction, zero_infinity, "log_probs", "log_probs", "TNC")?;
    let arrays = Arrays {
        targets,
        input_lengths,
        target_lengths,
        blank,
    };
    let (blank, labels) = if let Ok(array) = log_probs.cast::<PyArray3<f32>>() {
        validated_labels(array, &arrays, options)?
    } else if let Ok(array) = log_probs.cast::<PyArray3<f64>>() {
        validated_labels(array, &arrays, options)?
    } else {
        return Err(to_py_err(CtcError::LogProbsDtype {
            allowed: "float32 or float64",
        }));
    };
    Ok((blank, labels.into_pyarray(py).into_any()))
}

/// [`validate_batch`] for one float type: the resolved blank and the labels.
fn validated_labels<F: Float>(
    log_probs: &Bound<'_, PyArray3<F>>,
    arrays: &Arrays<'_>,
    options: Options,
) -> PyResult<(usize, Vec<u32>)> {
    let log_probs = log_probs.try_readonly()?;
    let batch = arrays.batch(log_probs.as_array())?;
    call::validate_only(batch, options).map_err(to_py_err)
}

/// The GPU adapter as a dict (name, backend, device type, driver, limits), or None when there
/// is none (or the build has no GPU backend). Opens the adapter on first use.
#[pyfunction]
fn gpu_info(py: Python<'_>) -> PyResult<Option<Bound<'_, PyDict>>> {
    #[cfg(feature = "gpu")]
    {
        let Ok(info) = without_gil(py, crate::gpu::info) else {
            return Ok(None);
        };
        let dict = PyDict::new(py);
        dict.set_item("name", info.name)?;
        dict.set_item("backend", info.backend)?;
        dict.set_item("device_type", info.device_type)?;
        dict.set_item("driver", info.driver)?;
        dict.set_item("driver_info", info.driver_info)?;
        dict.set_item("vendor", info.vendor)?;
        dict.set_item("device", info.device)?;
        dict.set_item("shader_f64", info.shader_f64)?;
        dict.set_item("workgroup_size", info.workgroup_size)?;
        let limits = PyDict::new(py);
        limits.set_item(
            "max_storage_buffer_binding_size",
            info.max_storage_buffer_binding_size,
        )?;
        limits.set_item("max_buffer_size", info.max_buffer_size)?;
        limits.set_item(
            "max_compute_workgroups_per_dimension",
            info.max_compute_workgroups_per_dimension,
        )?;
        limits.set_item(
            "max_compute_invocations_per_workgroup",
            info.max_compute_invocations_per_workgroup,
        )?;
        limits.set_item(
            "max_compute_workgroup_storage_size",
            info.max_compute_workgroup_storage_size,
        )?;
        dict.set_item("limits", limits)?;
        Ok(Some(dict))
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = py;
        Ok(None)
    }
}

/// Like `ctc(..., device="gpu")`, with each phase submitted and waited for separately:
/// returns `(loss, grad_or_None, timings)`, `timings` a dict of seconds (pack, upload,
/// compute, readback, unpack) and the number of chunks. For benchmarks only.
#[pyfunction]
#[pyo3(signature = (log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, grad_wrt, with_grad, input_kind="log_probs", layout="TNC"))]
#[allow(clippy::too_many_arguments)]
fn gpu_profile<'py>(
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
    input_kind: &str,
    layout: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let options = parse_options(reduction, zero_infinity, grad_wrt, input_kind, layout)?;
    #[cfg(feature = "gpu")]
    {
        let Ok(array) = log_probs.cast::<PyArray3<f32>>() else {
            return Err(to_py_err(CtcError::LogProbsDtype { allowed: "float32" }));
        };
        let arrays = Arrays {
            targets,
            input_lengths,
            target_lengths,
            blank,
        };
        let log_probs = array.try_readonly()?;
        let batch = arrays.batch(log_probs.as_array())?;
        let (output, timings) =
            without_gil(py, || call::run_gpu_profiled(batch, options, with_grad))
                .map_err(to_py_err)?;
        let mut items = losses_tuple(py, output)?;
        let dict = PyDict::new(py);
        dict.set_item("pack", timings.pack)?;
        dict.set_item("upload", timings.upload)?;
        dict.set_item("compute", timings.compute)?;
        dict.set_item("readback", timings.readback)?;
        dict.set_item("unpack", timings.unpack)?;
        dict.set_item("chunks", timings.chunks)?;
        items.push(dict.into_any());
        PyTuple::new(py, items)
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = (
            py,
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank,
            with_grad,
            options,
        );
        Err(to_py_err(CtcError::GpuUnavailable {
            tried: "nothing".to_owned(),
            message: crate::call::NO_GPU_BACKEND.to_owned(),
        }))
    }
}

/// Sets the number of worker threads for later calls.
#[pyfunction]
fn set_num_threads(threads: i64) -> PyResult<()> {
    let count = usize::try_from(threads).map_err(|_| CtcError::ThreadCount {
        value: threads.into(),
    });
    count.and_then(threads::set_num_threads).map_err(to_py_err)
}

/// The number of worker threads calls run on.
#[pyfunction]
fn get_num_threads() -> usize {
    threads::num_threads()
}

/// Runs later batches on the calling thread's OpenMP team (`enabled`), or on fastctc's own
/// pool; returns whether the process has an OpenMP runtime to run them on.
#[pyfunction]
fn use_openmp_team(enabled: bool) -> bool {
    if enabled {
        crate::openmp::enable()
    } else {
        crate::openmp::disable();
        false
    }
}

/// How many batches have run on an OpenMP team in this process.
#[pyfunction]
fn openmp_batches() -> usize {
    crate::openmp::batches()
}

/// Frees the gradient buffers and workspaces kept for reuse; returns the bytes freed.
#[pyfunction]
fn empty_cache() -> usize {
    crate::empty_cache()
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
    m.add(
        "GpuUnavailableError",
        m.py().get_type::<GpuUnavailableError>(),
    )?;
    m.add_function(wrap_pyfunction!(ctc, m)?)?;
    m.add_function(wrap_pyfunction!(posteriors, m)?)?;
    m.add_function(wrap_pyfunction!(align, m)?)?;
    m.add_function(wrap_pyfunction!(validate_batch, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_features, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_info, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_profile, m)?)?;
    m.add_function(wrap_pyfunction!(empty_cache, m)?)?;
    m.add_function(wrap_pyfunction!(use_openmp_team, m)?)?;
    m.add_function(wrap_pyfunction!(openmp_batches, m)?)?;
    Ok(())
}
