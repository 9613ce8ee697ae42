//! Unit tests of the CPU kernels as a whole, which `cargo test` reaches without a wheel:
//! the per-sample kernel against a plain log-space reference (itself checked against brute
//! force), the group kernel (`lockstep.rs`) against the per-sample kernel, and every SIMD
//! level the machine supports against the baseline, through the dispatcher's `_at` entry
//! points (the level is otherwise read once per process); and the batch scheduler, which
//! forms the jobs (`plan_jobs`) and runs a whole batch (`cpu::compute`).
//!
//! Everything is small (debug builds run these in a few seconds) and deterministic (a fixed
//! xorshift seed per test).

mod cases;
mod extreme;
mod kernels;
mod levels;
mod reference;
mod scheduling;
