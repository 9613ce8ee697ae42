//! The one error type of the crate.
//!
//! Every problem a caller can cause is a variant here, with enough context (argument name,
//! sample index, offending value) to write a message a user can act on. The Python binding
//! maps the whole enum to exceptions in one place (`src/python.rs`).

use std::fmt;

/// What a caller did wrong, or what the machine could not do.
#[derive(Debug, Clone, PartialEq)]
pub enum CtcError {
    /// An array has the wrong number of dimensions or an inconsistent shape.
    Shape {
        argument: &'static str,
        message: String,
    },
    /// One of T, N or C is zero.
    EmptyDimension {
        dimension: &'static str,
        shape: Vec<usize>,
    },
    /// A length (input or target) is negative or larger than its limit.
    Length {
        argument: &'static str,
        sample: usize,
        value: i64,
        limit_name: &'static str,
        limit: usize,
    },
    /// A target label outside `[0, C)`, or `[0, C]` when `star` (a `star_score` was given).
    Label {
        sample: usize,
        position: usize,
        value: i64,
        classes: usize,
        star: bool,
    },
    /// A target label equal to the blank.
    BlankInTarget {
        sample: usize,
        position: usize,
        blank: usize,
    },
    /// `blank` outside `[-C, C)`.
    Blank { value: i64, classes: usize },
    /// A `star_score` that is not finite.
    StarScore { value: f64 },
    /// A `star_score` given to a call other than an alignment.
    StarScoreJob,
    /// Concatenated targets whose length is not `sum(target_lengths)`.
    ConcatenatedLength { expected: u128, got: usize },
    /// A string option with a value we do not know.
    UnknownOption {
        argument: &'static str,
        value: String,
        allowed: &'static [&'static str],
    },
    /// `log_probs` of a dtype this entry point does not take.
    LogProbsDtype { allowed: &'static str },
    /// A thread count below 1.
    ThreadCount { value: i128 },
    /// A setting that is out of range or cannot be applied (for example threads that cannot
    /// start).
    Setting { message: String },
    /// `device="gpu"` but no usable GPU adapter: `tried` says which backends and adapters were
    /// considered, `message` why none was taken.
    GpuUnavailable { tried: String, message: String },
    /// The GPU adapter cannot compute in this dtype (float64 without 64-bit float shaders).
    GpuUnsupportedDtype {
        dtype: &'static str,
        adapter: String,
    },
    /// The GPU failed (device lost, out of memory) or cannot hold one sample of the batch.
    Gpu { message: String },
    /// A bug in fastctc, not in the input: an invariant did not hold.
    Internal { message: String },
    /// A buffer the computation needs cannot be allocated (`bytes`: its size, `None` when
    /// past the address space); see `memory`.
    OutOfMemory {
        what: &'static str,
        bytes: Option<usize>,
    },
}

/// The broad class of an error, used to pick the Python exception type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad values: maps to a `ValueError` subclass.
    Value,
    /// An input of a type the chosen backend cannot take: maps to a `TypeError` subclass.
    Type,
    /// No GPU to run on: maps to `GpuUnavailableError`, a `RuntimeError`.
    GpuUnavailable,
    /// The machine failed at run time: maps to `RuntimeError`.
    Runtime,
    /// Not enough memory: maps to `MemoryError`.
    Memory,
}

impl CtcError {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        // No wildcard: a new variant must say which exception it becomes.
        match self {
            CtcError::Shape { .. }
            | CtcError::EmptyDimension { .. }
            | CtcError::Length { .. }
            | CtcError::Label { .. }
            | CtcError::BlankInTarget { .. }
            | CtcError::Blank { .. }
            | CtcError::StarScore { .. }
            | CtcError::StarScoreJob
            | CtcError::ConcatenatedLength { .. }
            | CtcError::UnknownOption { .. }
            | CtcError::ThreadCount { .. } => ErrorKind::Value,
            CtcError::LogProbsDtype { .. } | CtcError::GpuUnsupportedDtype { .. } => {
                ErrorKind::Type
            }
            CtcError::GpuUnavailable { .. } => ErrorKind::GpuUnavailable,
            CtcError::Setting { .. } | CtcError::Gpu { .. } | CtcError::Internal { .. } => {
                ErrorKind::Runtime
            }
            CtcError::OutOfMemory { .. } => ErrorKind::Memory,
        }
    }
}

impl fmt::Display for CtcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtcError::Shape { argument, message } => write!(f, "{argument}: {message}"),
            CtcError::EmptyDimension { dimension, shape } => write!(
                f,
                "log_probs: {dimension} must be at least 1, got shape {shape:?} (T, N, C)"
            ),
            CtcError::Length {
                argument,
                sample,
                value,
                limit_name,
                limit,
            } => {
                if *value < 0 {
                    write!(
                        f,
                        "{argument}: sample {sample} has length {value}, which is negative"
                    )
                } else {
                    write!(
                        f,
                        "{argument}: sample {sample} has length {value}, which exceeds \
                         {limit_name}={limit}"
                    )
                }
            }
            CtcError::Label {
                sample,
                position,
                value,
                classes,
                star: false,
            } => write!(
                f,
                "targets: label {value} at sample {sample}, position {position} is outside \
                 [0, {classes}) (C={classes} classes)"
            ),
            CtcError::Label {
                sample,
                position,
                value,
                classes,
                star: true,
            } => write!(
                f,
                "targets: label {value} at sample {sample}, position {position} is outside \
                 [0, {classes}] (C={classes} classes, and {classes} the star token)"
            ),
            CtcError::StarScore { value } => write!(
                f,
                "star_score: expected a finite log-probability, got {value}"
            ),
            CtcError::StarScoreJob => write!(
                f,
                "star_score: only an alignment takes a star token, not a loss"
            ),
            CtcError::BlankInTarget {
                sample,
                position,
                blank,
            } => write!(
                f,
                "targets: label at sample {sample}, position {position} is the blank ({blank}); \
                 the blank cannot appear inside a target"
            ),
            CtcError::Blank { value, classes } => write!(
                f,
                "blank: {value} is outside [-{classes}, {classes}) for C={classes} classes"
            ),
            CtcError::ConcatenatedLength { expected, got } => write!(
                f,
                "targets: concatenated (1-D) targets have length {got}, but \
                 sum(target_lengths) is {expected}"
            ),
            CtcError::UnknownOption {
                argument,
                value,
                allowed,
            } => {
                let allowed: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
                write!(
                    f,
                    "{argument}: unknown value '{value}', expected one of {}",
                    allowed.join(", ")
                )
            }
            CtcError::LogProbsDtype { allowed } => write!(
                f,
                "log_probs: expected a 3-D NumPy array of dtype {allowed}"
            ),
            CtcError::ThreadCount { value } => write!(
                f,
                "set_num_threads: the thread count must be at least 1, got {value}"
            ),
            CtcError::Setting { message } => f.write_str(message),
            CtcError::Internal { message } => {
                write!(f, "fastctc internal error (please report it): {message}")
            }
            CtcError::GpuUnavailable { tried, message } => write!(
                f,
                "device='gpu': {message} (tried: {tried}). Install a GPU driver with Vulkan, \
                 Metal, DX12 or OpenGL ES 3.1 support (on Linux without a GPU, Mesa's software \
                 driver: `apt-get install mesa-vulkan-drivers libvulkan1`); choose a backend or \
                 adapter with WGPU_BACKEND=vulkan|metal|dx12|gl and WGPU_ADAPTER_NAME=<part of \
                 its name>; or use device='cpu'"
            ),
            CtcError::GpuUnsupportedDtype { dtype, adapter } => write!(
                f,
                "log_probs: device='gpu' cannot compute in {dtype}: the GPU adapter ({adapter}) \
                 has no 64-bit float shaders (SHADER_F64). fastctc does not downcast silently: \
                 pass float32 log_probs (log_probs.astype(numpy.float32)) or use device='cpu'"
            ),
            CtcError::Gpu { message } => write!(f, "device='gpu': {message}"),
            CtcError::OutOfMemory { what, bytes } => {
                let size = match bytes {
                    Some(bytes) => format!("{:.1} GiB", *bytes as f64 / (1u64 << 30) as f64),
                    None => "more bytes than the address space holds".to_owned(),
                };
                write!(
                    f,
                    "not enough memory: {what} needs {size}, which cannot be allocated \
                     (nothing was computed). Split the batch or shorten the samples (a \
                     broadcast log_probs view still gets a full (T, N, C) gradient); \
                     ctc_loss alone needs neither a gradient nor a forward table"
                )
            }
        }
    }
}

impl std::error::Error for CtcError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_argument_sample_and_value() {
        let e = CtcError::Label {
            sample: 1,
            position: 2,
            value: 7,
            classes: 5,
            star: false,
        };
        let text = e.to_string();
        assert!(text.contains("targets") && text.contains("sample 1"));
        assert!(text.contains("position 2") && text.contains('7'));
        assert!(text.contains("[0, 5)"));
        let star = CtcError::Label {
            sample: 1,
            position: 2,
            value: 7,
            classes: 5,
            star: true,
        };
        assert!(star.to_string().contains("[0, 5]") && star.to_string().contains("star"));
        assert!(CtcError::StarScore { value: f64::NAN }
            .to_string()
            .contains("star_score: expected a finite"));
        assert_eq!(CtcError::StarScoreJob.kind(), ErrorKind::Value);

        let e = CtcError::Length {
            argument: "input_lengths",
            sample: 0,
            value: -3,
            limit_name: "T",
            limit: 8,
        };
        assert!(e.to_string().contains("negative"));
    }

    #[test]
    fn gpu_errors_say_what_to_do() {
        let e = CtcError::GpuUnavailable {
            tried: "Vulkan, GL: no adapters".into(),
            message: "no GPU adapter found".into(),
        };
        assert_eq!(e.kind(), ErrorKind::GpuUnavailable);
        let text = e.to_string();
        assert!(text.contains("Vulkan, GL") && text.contains("mesa-vulkan-drivers"));
        assert!(text.contains("WGPU_BACKEND") && text.contains("device='cpu'"));

        let e = CtcError::GpuUnsupportedDtype {
            dtype: "float64",
            adapter: "llvmpipe (Vulkan)".into(),
        };
        assert_eq!(e.kind(), ErrorKind::Type);
        assert!(e.to_string().contains("float32") && e.to_string().contains("device='cpu'"));
        assert_eq!(
            CtcError::Gpu {
                message: "x".into()
            }
            .kind(),
            ErrorKind::Runtime
        );
    }

    #[test]
    fn out_of_memory_says_what_and_how_much() {
        let e = CtcError::OutOfMemory {
            what: "the gradient",
            bytes: Some(400 << 30),
        };
        assert_eq!(e.kind(), ErrorKind::Memory);
        assert!(e.to_string().contains("the gradient needs 400.0 GiB"));
        let e = CtcError::OutOfMemory {
            what: "the gradient",
            bytes: None,
        };
        assert!(e.to_string().contains("address space"));
    }
}
