//! The conflict-log suite of `tests/conflicts`, unchanged, on PostgreSQL (`support::backend`
//! reads this binary's name).

#[path = "conflicts/main.rs"]
mod conflicts;
