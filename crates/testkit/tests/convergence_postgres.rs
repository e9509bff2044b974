//! The convergence test of `tests/convergence`, unchanged, on PostgreSQL (`Backend::of_binary`
//! reads this binary's name).

#[path = "convergence/main.rs"]
mod convergence;
