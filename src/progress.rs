//! Progress of long work, on a terminal and off one. On a terminal: a bar, redrawn in place.
//! Without one (a cluster job, `nohup`, CI, a pipe): a plain line on stderr every
//! `MOCSE_PROGRESS_SECONDS` seconds (default 30), so a log shows that the job is alive and how
//! far it got. Both come from one indicatif bar; only where it draws differs.

use std::io::{IsTerminal, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};

/// How often a log line is written without a terminal.
pub fn log_interval() -> Duration {
    let seconds = std::env::var("MOCSE_PROGRESS_SECONDS").ok().and_then(|v| v.parse::<f64>().ok());
    Duration::from_secs_f64(seconds.filter(|s| s.is_finite() && *s > 0.0).unwrap_or(30.0))
}

/// Whether stderr is a terminal (a bar) or not (log lines).
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar of `len` units named `unit` ("images", "image evaluations"); `prefix` and
/// `message` can be set later. `rate` and `eta` come from the average since the start
/// (`rate_text`, `eta_text`), not from indicatif's estimate.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    bar_with_prefix(len, unit, "")
}

/// `bar` with its prefix set before it first draws (set afterwards, the steady tick of a log
/// could print a first line without it).
pub fn bar_with_prefix(len: u64, unit: &str, prefix: &str) -> ProgressBar {
    let (target, template) = if on_terminal() {
        (
            ProgressDrawTarget::stderr(),
            format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} ({{rate}}, {{eta}} left)"),
        )
    } else {
        let lines = LogLines { every: log_interval(), last: Mutex::new(None) };
        // indicatif redraws at most this often; the lines themselves are spaced by `every`.
        (
            ProgressDrawTarget::term_like_with_hz(Box::new(lines), 1),
            format!(
                "{{prefix}} {{pos}}/{{len}} {unit} ({{percent}}%) {{msg}} ({{rate}}, {{elapsed}} elapsed, {{eta}} left)"
            ),
        )
    };
    let style = ProgressStyle::with_template(&template)
        .expect("static template")
        .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}/s", rate_text(state.pos(), state.elapsed()));
        })
        .with_key("eta", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", eta_text(state.pos(), state.len(), state.elapsed()));
        })
        .progress_chars("=> ");
    let bar =
        ProgressBar::with_draw_target(Some(len), target).with_style(style).with_prefix(prefix.to_string());
    if !on_terminal() {
        // Without new positions (one long batch) there would be no redraw, and so no line.
        bar.enable_steady_tick(Duration::from_secs(1));
    }
    bar
}

/// The average rate since the start, as a whole number, or with one decimal below 10 per second.
/// indicatif's own estimate decays while no step ends, so for steps of a minute (bf16 training
/// through the emulator) it said "0/s" and hours left.
fn rate_text(done: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { done as f64 / seconds } else { 0.0 };
    if rate < 10.0 { format!("{rate:.1}") } else { format!("{rate:.0}") }
}

/// The time left at the average rate since the start ("?" before any progress).
fn eta_text(done: u64, len: Option<u64>, elapsed: Duration) -> String {
    match len {
        Some(len) if done > 0 => {
            let left = elapsed.mul_f64(len.saturating_sub(done) as f64 / done as f64);
            format!("{:#}", indicatif::HumanDuration(left))
        }
        _ => "?".to_string(),
    }
}

/// A "terminal" for indicatif that is a log: it writes the bar's text as one line, at most once
/// per `every` (and the first time at once).
#[derive(Debug)]
struct LogLines {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        // One space between words: an empty message would otherwise leave two.
        let text = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return Ok(());
        }
        *last = Some(Instant::now());
        writeln!(std::io::stderr(), "{text}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_time_left_are_averages_since_the_start() {
        assert_eq!(rate_text(5, Duration::from_secs(2)), "2.5");
        assert_eq!(rate_text(1000, Duration::from_secs(2)), "500");
        assert_eq!(rate_text(0, Duration::ZERO), "0.0");
        // 128 of 512 images in 60 s: 3 minutes left.
        assert_eq!(eta_text(128, Some(512), Duration::from_secs(60)), "3m");
        assert_eq!(eta_text(0, Some(512), Duration::from_secs(60)), "?");
        assert_eq!(eta_text(512, Some(512), Duration::from_secs(60)), "0s");
    }
}
