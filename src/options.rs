//! The options shared by every backend.

use crate::error::CtcError;

/// How per-sample losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Per-sample losses, shape `(N,)`.
    None,
    /// The sum of the per-sample losses.
    Sum,
    /// `mean_n(loss_n / max(target_length_n, 1))`, torch's definition.
    Mean,
}

impl Reduction {
    /// The accepted spellings, in the order shown to users.
    pub const NAMES: &'static [&'static str] = &["mean", "sum", "none"];

    /// Parses `"none"`, `"sum"` or `"mean"`.
    pub fn parse(value: &str) -> Result<Self, CtcError> {
        match value {
            "none" => Ok(Reduction::None),
            "sum" => Ok(Reduction::Sum),
            "mean" => Ok(Reduction::Mean),
            _ => Err(CtcError::UnknownOption {
                argument: "reduction",
                value: value.to_owned(),
                allowed: Self::NAMES,
            }),
        }
    }
}

/// Which gradient is returned (DESIGN.md §1, "The gradient, stated once").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradWrt {
    /// The true gradient `d loss / d log_probs = -gamma`.
    LogProbs,
    /// `exp(log_probs) - gamma`: the logits gradient through `log_softmax`, torch's convention.
    Logits,
}

impl GradWrt {
    /// The accepted spellings.
    pub const NAMES: &'static [&'static str] = &["log_probs", "logits"];

    /// Parses `"log_probs"` or `"logits"`.
    pub fn parse(value: &str) -> Result<Self, CtcError> {
        match value {
            "log_probs" => Ok(GradWrt::LogProbs),
            "logits" => Ok(GradWrt::Logits),
            _ => Err(CtcError::UnknownOption {
                argument: "grad_wrt",
                value: value.to_owned(),
                allowed: Self::NAMES,
            }),
        }
    }
}

/// Everything about a call that is not data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub reduction: Reduction,
    pub zero_infinity: bool,
    pub grad_wrt: GradWrt,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reduction: Reduction::Mean,
            zero_infinity: false,
            grad_wrt: GradWrt::LogProbs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_names_and_rejects_others() {
        assert_eq!(Reduction::parse("sum"), Ok(Reduction::Sum));
        assert_eq!(GradWrt::parse("logits"), Ok(GradWrt::Logits));
        let err = Reduction::parse("avg").unwrap_err().to_string();
        assert!(err.contains("reduction") && err.contains("avg") && err.contains("'mean'"));
        assert!(GradWrt::parse("probs").is_err());
    }
}
