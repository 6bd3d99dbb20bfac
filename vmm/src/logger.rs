//! A minimal stderr logger for the `log` facade: `IVMM_LOG=error|warn|info|debug|trace`
//! (default `warn`). Lines end in `\r\n` while the terminal is in raw mode, so they start at
//! the left margin between guest console output.

use log::{Level, LevelFilter, Log, Metadata, Record};

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
        eprint!("ivmm: {level}: {}{end}", record.args());
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
