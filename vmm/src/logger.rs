//! A minimal stderr logger for the `log` facade: `IVMM_LOG=error|warn|info|debug|trace`
//! (default `warn`). Lines end in `\r\n` while the terminal is in raw mode, so they start at
//! the left margin between guest console output.
//!
//! Warnings and errors are rate-limited per call site: many report what a guest driver did
//! wrong, and a hostile guest must not be able to flood ivmm's log (seen: 20,000 lines a
//! minute from one feature-negotiation warning).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Lines one call site may print per window.
const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Site {
    window_start: Instant,
    printed: u32,
    suppressed: u64,
}

/// What to do with one message from a call site.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Print,
    /// Print, saying how many were dropped in the previous window.
    PrintAfterSuppressing(u64),
    /// Print, and say that more from this site are dropped for a while.
    PrintLast,
    Drop,
}

#[derive(Default)]
struct RateLimiter {
    sites: HashMap<(&'static str, u32), Site>,
}

impl RateLimiter {
    fn admit(&mut self, site: (&'static str, u32), now: Instant) -> Verdict {
        let s = self.sites.entry(site).or_insert(Site {
            window_start: now,
            printed: 0,
            suppressed: 0,
        });
        if now.duration_since(s.window_start) >= WINDOW {
            let dropped = std::mem::take(&mut s.suppressed);
            s.window_start = now;
            s.printed = 1;
            return if dropped > 0 {
                Verdict::PrintAfterSuppressing(dropped)
            } else {
                Verdict::Print
            };
        }
        if s.printed < BURST {
            s.printed += 1;
            return if s.printed == BURST {
                Verdict::PrintLast
            } else {
                Verdict::Print
            };
        }
        s.suppressed += 1;
        Verdict::Drop
    }
}

static LIMITER: Mutex<Option<RateLimiter>> = Mutex::new(None);

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let end = if crate::terminal::is_raw() {
            "\r\n"
        } else {
            "\n"
        };
        let verdict = if record.level() <= Level::Warn {
            let site = (
                record.file_static().unwrap_or("?"),
                record.line().unwrap_or(0),
            );
            let mut limiter = LIMITER.lock().unwrap_or_else(|p| p.into_inner());
            limiter
                .get_or_insert_with(RateLimiter::default)
                .admit(site, Instant::now())
        } else {
            Verdict::Print
        };
        match verdict {
            Verdict::Drop => {}
            Verdict::Print => eprint!("ivmm: {level}: {}{end}", record.args()),
            Verdict::PrintAfterSuppressing(n) => eprint!(
                "ivmm: {level}: {} ({n} more like it were suppressed){end}",
                record.args()
            ),
            Verdict::PrintLast => eprint!(
                "ivmm: {level}: {} (further messages like it are suppressed for a minute){end}",
                record.args()
            ),
        }
    }

    fn flush(&self) {}
}

/// Installs the logger; the level comes from `IVMM_LOG`.
pub fn init() {
    let level = match std::env::var("IVMM_LOG").as_deref() {
        Ok("error") => LevelFilter::Error,
        Ok("info") => LevelFilter::Info,
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        Ok("off") => LevelFilter::Off,
        _ => LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_prints_a_burst_then_is_quiet_until_the_next_window() {
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        let site = ("devices/src/virtio/pci/mod.rs", 384);
        let verdicts: Vec<Verdict> = (0..15).map(|_| limiter.admit(site, t0)).collect();
        assert!(verdicts[..9].iter().all(|v| *v == Verdict::Print));
        assert_eq!(verdicts[9], Verdict::PrintLast);
        assert!(verdicts[10..].iter().all(|v| *v == Verdict::Drop));
        // Another site is not affected.
        assert_eq!(limiter.admit(("x.rs", 1), t0), Verdict::Print);
        // A new window says how many were dropped.
        assert_eq!(
            limiter.admit(site, t0 + WINDOW),
            Verdict::PrintAfterSuppressing(5)
        );
        assert_eq!(limiter.admit(site, t0 + WINDOW), Verdict::Print);
    }
}
