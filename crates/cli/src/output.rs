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

/// Writes a table: the header row, then each row; see [`table_lines`].
pub(crate) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    for line in table_lines(header, rows) {
        outln!("{line}");
    }
}

/// A table's lines: columns padded to their widest cell (by characters, so `·` counts once)
/// and two spaces apart; the last column is not padded.
fn table_lines<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Vec<String> {
    let mut widths = header.map(|cell| cell.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
        }
        text.trim_end().to_owned()
    };
    let mut lines = vec![line(header)];
    lines.extend(
        rows.iter()
            .map(|row| line(row.each_ref().map(String::as_str))),
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::table_lines;

    #[test]
    fn a_table_pads_columns_to_their_widest_cell() {
        let rows = [
            ["Till · front".to_owned(), "3".to_owned(), "".to_owned()],
            ["B".to_owned(), "12".to_owned(), "revoked".to_owned()],
        ];
        assert_eq!(
            table_lines(["NAME", "PENDING", "STATUS"], &rows),
            [
                "NAME          PENDING  STATUS",
                "Till · front  3",
                "B             12       revoked",
            ]
        );
    }
}
