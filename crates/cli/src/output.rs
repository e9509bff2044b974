//! Results on stdout. A reader that goes away (`ferry runs | head -1`) is not an error: once
//! stdout is a closed pipe, further results are dropped and the command ends as it would have,
//! where `println!` would panic. A server (`ferry serve | head -1`) keeps serving.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout's reader has gone.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to stdout, then a newline when `newline`.
pub(crate) fn write(args: fmt::Arguments<'_>, newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
        }
        Err(error) => {
            CLOSED.store(true, Ordering::Relaxed);
            tracing::warn!(%error, "Writing to stdout failed; further results are dropped.");
        }
    }
}

/// `println!` for results: see the module documentation.
macro_rules! outln {
    () => { $crate::output::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), true) };
}

/// `print!` for results: see the module documentation.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), false) };
}
