//! The one error type of the crate.
//!
//! Every problem a caller can cause is a variant here, with enough context (argument name,
//! sample index, offending value) to write a message a user can act on. The Python binding
//! maps the whole enum to exceptions in one place (`src/python.rs`).

use std::fmt;

/// What a caller did wrong, or what the machine could not do.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A target label outside `[0, C)`.
    Label {
        sample: usize,
        position: usize,
        value: i64,
        classes: usize,
    },
    /// A target label equal to the blank.
    BlankInTarget {
        sample: usize,
        position: usize,
        blank: usize,
    },
    /// `blank` outside `[-C, C)`.
    Blank { value: i64, classes: usize },
    /// Concatenated targets whose length is not `sum(target_lengths)`.
    ConcatenatedLength { expected: u128, got: usize },
    /// A string option with a value we do not know.
    UnknownOption {
        argument: &'static str,
        value: String,
        allowed: &'static [&'static str],
    },
    /// A setting that is out of range (for example a thread count of 0).
    Setting { message: String },
}

/// The broad class of an error, used to pick the Python exception type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad values: maps to a `ValueError` subclass.
    Value,
}

impl CtcError {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Value
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
            } => write!(
                f,
                "targets: label {value} at sample {sample}, position {position} is outside \
                 [0, {classes}) (C={classes} classes)"
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
            CtcError::Setting { message } => f.write_str(message),
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
        };
        let text = e.to_string();
        assert!(text.contains("targets") && text.contains("sample 1"));
        assert!(text.contains("position 2") && text.contains('7'));

        let e = CtcError::Length {
            argument: "input_lengths",
            sample: 0,
            value: -3,
            limit_name: "T",
            limit: 8,
        };
        assert!(e.to_string().contains("negative"));
    }
}
