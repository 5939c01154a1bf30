//! A training job's progress as the trainer streams it (`Train`,
//! `WatchJob`): a redrawn bar (indicatif) when stderr is a terminal, else
//! one line per stage for the caller to print.

use std::io::IsTerminal;

use evergreen_proto::v1::{Progress, Stage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn stage_name(s: i32) -> &'static str {
    Stage::try_from(s).map_or("?", |s| s.short_name())
}

pub struct TrainProgress {
    bar: Option<ProgressBar>,
    last_stage: i32,
}

impl TrainProgress {
    /// A bar on stderr when `bar` is asked for and stderr is a terminal;
    /// otherwise [`TrainProgress::update`] returns a line per stage.
    pub fn new(bar: bool) -> Self {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("[{bar:30}] {pos:>3}% {msg}")
                    .expect("a valid template")
                    .progress_chars("#>."),
            );
            b
        });
        TrainProgress {
            bar,
            last_stage: -1,
        }
    }

    /// Shows `p`; returns the line to print when no bar is drawn and the
    /// stage changed (`" 40% searching: candidate 2/3, fold 4/5"`).
    pub fn update(&mut self, p: &Progress) -> Option<String> {
        let stage = stage_name(p.stage).to_lowercase();
        let changed = p.stage != self.last_stage;
        self.last_stage = p.stage;
        match &self.bar {
            Some(b) => {
                b.set_position(p.percent.round().clamp(0.0, 100.0) as u64);
                b.set_message(format!(
                    "{stage:<10} {} ({:.1} s)",
                    p.message,
                    p.elapsed_ms as f64 / 1000.0
                ));
                None
            }
            None => changed.then(|| format!("{:>3.0}% {stage}: {}", p.percent, p.message)),
        }
    }

    /// Leaves the bar's last state on screen.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

impl Drop for TrainProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_terminal_one_line_per_stage() {
        let mut p = TrainProgress::new(false);
        let at = |stage: Stage, percent: f64, message: &str| Progress {
            stage: stage as i32,
            percent,
            message: message.into(),
            ..Default::default()
        };
        assert_eq!(
            p.update(&at(Stage::Loading, 0.0, "reading d.csv"))
                .as_deref(),
            Some("  0% loading: reading d.csv")
        );
        assert_eq!(p.update(&at(Stage::Loading, 5.0, "parsed")), None);
        assert_eq!(
            p.update(&at(Stage::Searching, 42.4, "candidate 2/3"))
                .as_deref(),
            Some(" 42% searching: candidate 2/3")
        );
    }
}
