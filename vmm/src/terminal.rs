//! Raw mode for an interactive console, restored on every way out: normal
//! return (guard drop), and panics (the hook below).

use std::sync::{Mutex, OnceLock};

/// The terminal settings to restore, if we changed them.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
/// The same settings for signal handlers, which cannot take a lock.
static SAVED_FOR_SIGNALS: OnceLock<libc::termios> = OnceLock::new();

/// Puts stdin's terminal in raw mode while alive.
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; `None` otherwise.
    pub fn enable() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it and we check the
        // result before using it.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer to a termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return None;
        }
        let mut raw = original;
        // SAFETY: cfmakeraw only edits the struct we pass.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: valid fd and pointer to an initialised termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(original);
        let _ = SAVED_FOR_SIGNALS.set(original);
        install_panic_hook();
        Some(RawTerminal(()))
    }
}

/// Whether this process has the terminal in raw mode right now.
pub fn is_raw() -> bool {
    SAVED.lock().map(|s| s.is_some()).unwrap_or(false)
}

/// Restores the saved settings, if any; safe to call more than once.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(original) = saved {
        // SAFETY: valid fd and pointer to the termios saved by enable().
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &original) };
    }
}

/// Restores the original settings from a signal handler (no lock, no
/// allocation). Harmless if they were restored already.
pub fn restore_from_signal_handler() {
    if let Some(original) = SAVED_FOR_SIGNALS.get() {
        // SAFETY: tcsetattr is async-signal-safe; valid fd and pointer to
        // the termios saved by enable().
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}
