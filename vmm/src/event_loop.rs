//! The main thread's event loop (event-manager): console input from stdin,
//! termination signals (a signalfd), the hard-stop timer, and the stop event that ends a
//! VM run. vCPU threads never block on any of these.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::{AcpiPm, Serial};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::control::{ExitReason, StopControl};

/// Ctrl-A: the console escape prefix.
const ESCAPE_PREFIX: u8 = 0x01;
/// After the prefix, `x` quits.
const ESCAPE_QUIT: u8 = b'x';
/// Input typed faster than the guest reads it is buffered up to this much.
const MAX_PENDING_INPUT: usize = 1 << 20;

/// Feeds stdin to COM1, handling the Ctrl-A escape on terminals.
pub struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    stdin: std::mem::ManuallyDrop<std::fs::File>,
    drained: EventFd,
    pending: VecDeque<u8>,
    escape_enabled: bool,
    after_prefix: bool,
    control: Arc<StopControl>,
}

impl ConsoleInput {
    /// `drained` must be the event the serial device fires when its input
    /// FIFO empties. Escape handling is on only for terminals: piped input
    /// reaches the guest byte for byte.
    pub fn new(
        serial: Arc<Mutex<Serial>>,
        drained: EventFd,
        escape_enabled: bool,
        control: Arc<StopControl>,
    ) -> Self {
        // SAFETY: fd 0 stays open for the life of the process; ManuallyDrop
        // keeps us from closing it.
        let stdin =
            std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(libc::STDIN_FILENO) });
        Self {
            serial,
            stdin,
            drained,
            pending: VecDeque::new(),
            escape_enabled,
            after_prefix: false,
            control,
        }
    }

    fn accept(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.escape_enabled && self.after_prefix {
                self.after_prefix = false;
                match b {
                    ESCAPE_QUIT | b'X' => {
                        self.control.stop(ExitReason::UserQuit);
                        return;
                    }
                    ESCAPE_PREFIX => self.queue(b),
                    _ => {
                        self.queue(ESCAPE_PREFIX);
                        self.queue(b);
                    }
                }
            } else if self.escape_enabled && b == ESCAPE_PREFIX {
                self.after_prefix = true;
            } else {
                self.queue(b);
            }
        }
    }

    fn queue(&mut self, b: u8) {
        if self.pending.len() < MAX_PENDING_INPUT {
            self.pending.push_back(b);
        }
    }

    /// Moves as much pending input into the UART FIFO as fits.
    fn flush_to_guest(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (front, _) = self.pending.as_slices();
        let n = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(front);
        self.pending.drain(..n);
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        // stdin may be /dev/null or a regular file, which epoll refuses:
        // then there simply is no console input.
        if let Err(e) = ops.add(Events::new(&*self.stdin, EventSet::IN)) {
            log::debug!("stdin is not pollable ({e:?}); console input disabled");
        }
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::error!("cannot watch serial input drain: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
        } else if events.event_set().contains(EventSet::IN) {
            let mut buf = [0u8; 512];
            match self.stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = ops.remove(events);
                }
                Ok(n) => self.accept(&buf[..n]),
            }
        } else {
            // HUP/ERR without data: the other side is gone.
            let _ = ops.remove(events);
        }
        self.flush_to_guest();
    }
}

/// The signals that stop ivmm (power button first, then a hard stop).
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it and
    // sigaddset only sets bits of valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the stop signals in the calling thread, and so in every thread it
/// starts afterwards: they then wait for the event loop's signalfd instead
/// of interrupting whichever thread the kernel picks. Call before the first
/// thread is started.
pub fn block_stop_signals() -> std::io::Result<()> {
    let set = stop_signal_set();
    // SAFETY: a valid, initialised set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// A signalfd for the stop signals. Signals that arrive while none exists
/// (between two boots of `--on-reboot restart`) stay pending for the next.
struct StopSignals(std::fs::File);

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        let set = stop_signal_set();
        // SAFETY: -1 asks for a new descriptor; the set is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that the File now owns.
        Ok(Self(unsafe { std::fs::File::from_raw_fd(fd) }))
    }

    /// Reads every queued signal; returns how many there were.
    fn drain(&mut self) -> usize {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        let mut count = 0;
        while let Ok(n) = self.0.read(&mut info) {
            if n != info.len() {
                break;
            }
            count += 1;
        }
        count
    }
}

/// Set once a termination signal arrived: from then on a guest reboot ends
/// ivmm instead of restarting it (else a guest in a reboot loop could
/// never be stopped with SIGTERM).
static SHUTDOWN_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether a termination signal asked ivmm to stop.
pub fn shutdown_requested() -> bool {
    SHUTDOWN_REQUESTED.load(Ordering::SeqCst)
}

/// Power button on the first signal, hard stop on the second signal or
/// when the timeout expires; ends the loop when the VM stops.
pub struct Lifecycle {
    control: Arc<StopControl>,
    signals: StopSignals,
    timer: TimerFd,
    acpi: Arc<Mutex<AcpiPm>>,
    power_button_event: u32,
    timeout: Duration,
    signalled: bool,
}

impl Lifecycle {
    /// Routes SIGTERM, SIGINT and SIGHUP to this loop (through a signalfd:
    /// see [`block_stop_signals`]).
    pub fn new(
        control: Arc<StopControl>,
        acpi: Arc<Mutex<AcpiPm>>,
        power_button_event: u32,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let signals = StopSignals::new()?;
        Ok(Self {
            control,
            signals,
            timer: TimerFd::new()?,
            acpi,
            power_button_event,
            timeout,
            signalled: false,
        })
    }
}

impl MutEventSubscriber for Lifecycle {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.control.event.as_raw_fd(),
            self.signals.0.as_raw_fd(),
            self.timer.as_raw_fd(),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch lifecycle fd {fd}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.control.event.as_raw_fd() {
            let _ = self.control.event.read();
        } else if fd == self.signals.0.as_raw_fd() {
            let received = self.signals.drain();
            if received == 0 {
                return;
            }
            if self.signalled {
                self.control.stop(ExitReason::HardStop);
                return;
            }
            self.signalled = true;
            SHUTDOWN_REQUESTED.store(true, Ordering::SeqCst);
            eprintln!(
                "\r\nivmm: signal received: pressing the power button; hard stop in {} s",
                self.timeout.as_secs()
            );
            let pressed = self
                .acpi
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .raise_ged_event(self.power_button_event);
            if let Err(e) = pressed {
                log::error!("cannot press the power button: {e}");
            }
            if let Err(e) = self.timer.reset(self.timeout, None) {
                log::error!("cannot arm the shutdown timer: {e}; stopping now");
                self.control.stop(ExitReason::HardStop);
            }
        } else if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            self.control.stop(ExitReason::HardStop);
        }
    }
}
