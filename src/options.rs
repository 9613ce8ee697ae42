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

/// Which gradient is returned (`docs/design.md#gradient`, "The gradient contract").
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

/// What the `(T, N, C)` input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Log-probabilities (normally `log_softmax` outputs, but not required to be).
    LogProbs,
    /// Unnormalised logits: `log_softmax` over classes is fused into the computation, and
    /// `GradWrt::Logits` is the gradient with respect to this input.
    Logits,
}

impl InputKind {
    /// The accepted spellings.
    pub const NAMES: &'static [&'static str] = &["log_probs", "logits"];

    /// Parses `"log_probs"` or `"logits"`.
    pub fn parse(value: &str) -> Result<Self, CtcError> {
        match value {
            "log_probs" => Ok(InputKind::LogProbs),
            "logits" => Ok(InputKind::Logits),
            _ => Err(CtcError::UnknownOption {
                argument: "input_kind",
                value: value.to_owned(),
                allowed: Self::NAMES,
            }),
        }
    }
}

/// The memory order of the gradient (and of the caller's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `(T, N, C)`, torch's CTC layout.
    Tnc,
    /// `(N, T, C)`, batch-major, what most models produce.
    Ntc,
}

impl Layout {
    /// The accepted spellings.
    pub const NAMES: &'static [&'static str] = &["TNC", "NTC"];

    /// Parses `"TNC"` or `"NTC"`.
    pub fn parse(value: &str) -> Result<Self, CtcError> {
        match value {
            "TNC" => Ok(Layout::Tnc),
            "NTC" => Ok(Layout::Ntc),
            _ => Err(CtcError::UnknownOption {
                argument: "layout",
                value: value.to_owned(),
                allowed: Self::NAMES,
            }),
        }
    }
}

/// The backend a call runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    /// The accepted spellings.
    pub const NAMES: &'static [&'static str] = &["cpu", "gpu"];

    /// Parses `"cpu"` or `"gpu"`.
    pub fn parse(value: &str) -> Result<Self, CtcError> {
        match value {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            _ => Err(CtcError::UnknownOption {
                argument: "device",
                value: value.to_owned(),
                allowed: Self::NAMES,
            }),
        }
    }
}

/// What a call computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// The loss alone.
    Loss,
    /// The loss and its gradient.
    LossAndGrad,
    /// Per-sample losses and the posterior occupancy `gamma` in place of the gradient.
    Posteriors,
    /// The best path of every sample (forced alignment).
    Align,
}

/// Everything about a call that is not data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    pub reduction: Reduction,
    pub zero_infinity: bool,
    pub grad_wrt: GradWrt,
    pub input_kind: InputKind,
    /// The layout the gradient is returned in (the input is always a `(T, N, C)` view).
    pub layout: Layout,
    /// [`Job::Align`] only: targets may hold the class `C` (one past the input's classes),
    /// the "star" token, which scores this log-probability at every frame without a column
    /// of its own. Finite.
    pub star_score: Option<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reduction: Reduction::Mean,
            zero_infinity: false,
            grad_wrt: GradWrt::LogProbs,
            input_kind: InputKind::LogProbs,
            layout: Layout::Tnc,
            star_score: None,
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
        assert_eq!(InputKind::parse("logits"), Ok(InputKind::Logits));
        assert_eq!(Layout::parse("NTC"), Ok(Layout::Ntc));
        assert_eq!(Device::parse("gpu"), Ok(Device::Gpu));
        assert!(Device::parse("cuda")
            .unwrap_err()
            .to_string()
            .contains("'cpu'"));
        assert!(Layout::parse("ntc")
            .unwrap_err()
            .to_string()
            .contains("layout"));
    }
}
