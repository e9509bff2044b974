//! Progress of long cycles (a fresh device's first snapshot) on the terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use ferry_agent::ProgressFn;
use ferry_client::{Phase, Progress};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ProgressMode;

/// A progress callback for the chosen mode, or `None` when nothing should be shown.
pub(crate) fn reporter(mode: ProgressMode) -> Option<ProgressFn> {
    let mode = match mode {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::None,
        other => other,
    };
    match mode {
        ProgressMode::Bar => {
            let bars: Mutex<Option<(Phase, ProgressBar)>> = Mutex::new(None);
            Some(Arc::new(move |p: Progress| show_bar(&bars, p)))
        }
        ProgressMode::Lines => Some(Arc::new(|p: Progress| match p.total {
            Some(total) => eprintln!("{} {}/{}", phase_name(p.phase), p.done, total),
            None => eprintln!("{} {}", phase_name(p.phase), p.done),
        })),
        ProgressMode::Auto | ProgressMode::None => None,
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Push => "push",
        Phase::Pull => "pull",
    }
}

fn show_bar(bars: &Mutex<Option<(Phase, ProgressBar)>>, p: Progress) {
    let mut current = bars.lock().expect("progress lock");
    let same_phase = matches!(&*current, Some((phase, _)) if *phase == p.phase);
    if !same_phase {
        if let Some((_, bar)) = current.take() {
            bar.finish();
        }
        let bar = match p.total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg:>5} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{msg:>5} {spinner} {pos} rows ({per_sec})")
                    .expect("valid template"),
            ),
        };
        bar.set_message(phase_name(p.phase));
        *current = Some((p.phase, bar));
    }
    if let Some((_, bar)) = current.as_ref() {
        if let Some(total) = p.total {
            bar.set_length(total);
        }
        bar.set_position(p.done);
        if p.total.is_some_and(|t| p.done >= t) {
            bar.finish();
        }
    }
}
