//! Progress on the terminal: indicatif bars when stderr is a terminal, plain lines
//! (one when a task ends) otherwise, so logs of CI runs stay readable.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lazysnap::image::{Progress, Task};

/// Bars or lines, chosen by whether stderr is a terminal.
pub fn for_stderr() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(Bars(MultiProgress::with_draw_target(
            ProgressDrawTarget::stderr(),
        )))
    } else {
        Arc::new(Lines)
    }
}

struct Bars(MultiProgress);

impl Progress for Bars {
    fn task(&self, label: &str, total: Option<u64>) -> Box<dyn Task> {
        let bar = match total {
            Some(n) => {
                let b = ProgressBar::new(n);
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:<28} [{bar:30}] {bytes}/{total_bytes} {msg}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                b
            }
            None => {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{prefix:<28} {spinner} {elapsed} {msg}")
                        .expect("static template"),
                );
                b.enable_steady_tick(std::time::Duration::from_millis(200));
                b
            }
        };
        bar.set_prefix(label.to_string());
        Box::new(BarTask(self.0.add(bar)))
    }
}

struct BarTask(ProgressBar);

impl Task for BarTask {
    fn set(&self, done: u64) {
        self.0.set_position(done);
    }
    fn finish(&self, note: &str) {
        self.0.finish_with_message(note.to_string());
    }
}

struct Lines;

impl Progress for Lines {
    fn task(&self, label: &str, _total: Option<u64>) -> Box<dyn Task> {
        Box::new(LineTask(label.to_string()))
    }
}

struct LineTask(String);

impl Task for LineTask {
    fn set(&self, _: u64) {}
    fn finish(&self, note: &str) {
        eprintln!("{}: {note}", self.0);
    }
}
