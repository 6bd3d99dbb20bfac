//! Runs one lab process (QEMU for L1, or ivmm/sh directly), collecting its output with host
//! timestamps, feeding scripted stdin, and enforcing the timeout. The child is killed when the
//! run times out and whenever the runner is dropped.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::error::{tail, LabError, Result};

/// Printed by the L1 `run.sh` right before it starts ivmm (or the script).
pub(crate) const MARK_RUN_START: &str = "LAB-RUN-START";
/// Printed by `run.sh` after ivmm exits, on its own line, followed by the exit code.
pub(crate) const MARK_RUN_EXIT: &str = "LAB-RUN-EXIT=";
/// Printed by L1's `/init` once `/dev/kvm` is there.
pub(crate) const MARK_KVM_READY: &str = "LAB-KVM-READY";
/// Longer than any framing marker: how far back to look when a marker may span two reads.
const MAX_MARKER_LEN: usize = 32;
/// How long output may stay open after the child exited (a background grandchild holding
/// stdout) before the run is considered over.
const LINGER_AFTER_EXIT: Duration = Duration::from_millis(500);
/// What the guest kernel prints when it stops (`kernel_halt`, `kernel_power_off`,
/// `kernel_restart`); printed even with `quiet`.
const GUEST_END_MARKERS: [&str; 3] = [
    "reboot: System halted",
    "reboot: Power down",
    "reboot: Restarting system",
];
/// Poll interval for noticing that the child exited while its stdout stays open.
const EXIT_POLL: Duration = Duration::from_millis(250);

/// When to send a piece of stdin.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Once the console (after ivmm started, and after the previous step) shows this text.
    Marker(String),
    /// This long after the previous step (or after ivmm started).
    Delay(Duration),
}

/// One scripted piece of stdin for ivmm.
#[derive(Debug, Clone)]
pub struct StdinStep {
    pub trigger: Trigger,
    pub data: Vec<u8>,
}

/// A child process that is killed and reaped when dropped.
pub(crate) struct ChildGuard(Option<Child>, Option<ExitStatus>);

impl ChildGuard {
    pub(crate) fn new(child: Child) -> Self {
        Self(Some(child), None)
    }

    fn child(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match (self.0.take(), self.1) {
            (_, Some(status)) => Ok(status),
            (Some(mut child), None) => child.wait(),
            (None, None) => Err(std::io::Error::other("child already reaped")),
        }
    }

    /// Whether the child has exited; keeps the status for [`ChildGuard::wait`].
    fn exited(&mut self) -> bool {
        if self.1.is_none() {
            if let Some(child) = self.0.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.1 = Some(status);
                    self.0 = None;
                }
            }
        }
        self.1.is_some()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Event {
    Out(Instant, Vec<u8>),
    Err(Vec<u8>),
    OutClosed,
}

fn pump(mut from: impl Read + Send + 'static, tx: Sender<Event>, is_err: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    let event = if is_err {
                        Event::Err(data)
                    } else {
                        Event::Out(Instant::now(), data)
                    };
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            }
        }
        if !is_err {
            let _ = tx.send(Event::OutClosed);
        }
    });
}

/// How a run's output is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Everything the process prints is the console (ivmm or sh run directly).
    Direct,
    /// QEMU's serial output: L1 log, then the console between `LAB-RUN-START` and
    /// `LAB-RUN-EXIT=`, then more L1 log.
    Nested,
}

/// Everything a finished run produced, before interpretation.
pub(crate) struct RawRun {
    pub out: Vec<u8>,
    pub err: Vec<u8>,
    /// (offset in `out`, arrival) of each chunk read.
    pub chunks: Vec<(usize, Instant)>,
    pub started: Instant,
    pub finished: Instant,
    pub status: ExitStatus,
}

/// Settings for one run.
pub(crate) struct RunSpec<'a> {
    pub framing: Framing,
    pub timeout: Option<Duration>,
    pub stdin: &'a [StdinStep],
    /// Copy console output to our stdout as it arrives (the `lab` command).
    pub passthrough: bool,
    /// Stderr is merged into the output (direct runs: ivmm's stderr is part of its console).
    pub merge_stderr: bool,
    /// Once the guest kernel printed that it halted/powered off/restarted, ivmm must exit
    /// within this time, or the run fails at once instead of at the timeout.
    pub guest_end_grace: Option<Duration>,
    /// Called at a timeout before the kill; its text goes into the error.
    pub diagnose: Option<&'a dyn Fn() -> String>,
}

/// Spawns `cmd` (stdout/stderr must be piped, stdin piped iff `spec.stdin` is not empty) and
/// runs it to completion.
pub(crate) fn run(mut cmd: Command, what: &str, spec: &RunSpec<'_>) -> Result<RawRun> {
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("starting {what}"), e))?;
    let mut guard = ChildGuard::new(child);
    let (tx, rx) = mpsc::channel();
    let mut stdin: Option<ChildStdin> = None;
    if let Some(child) = guard.child() {
        if let Some(out) = child.stdout.take() {
            pump(out, tx.clone(), false);
        }
        if let Some(err) = child.stderr.take() {
            pump(err, tx.clone(), !spec.merge_stderr);
        }
        stdin = child.stdin.take();
    }
    drop(tx);
    let mut state = State {
        spec,
        out: Vec::new(),
        err: Vec::new(),
        chunks: Vec::new(),
        console_from: None,
        frame_scan: 0,
        phase: "booting L1",
        step: 0,
        step_base: None,
        scan_from: 0,
        stdin,
        passthrough_done: false,
        guest_ended: None,
        end_scan: 0,
    };
    if spec.framing == Framing::Direct {
        state.console_from = Some(0);
        state.step_base = Some(started);
        state.phase = "running";
    }
    let deadline = spec.timeout.map(|t| started + t);
    let mut out_open = true;
    let mut exited_at: Option<Instant> = None;
    while out_open {
        let poll = Instant::now() + EXIT_POLL;
        let grace_end = state
            .guest_ended
            .zip(spec.guest_end_grace)
            .map(|(t, g)| t + g + EXIT_POLL);
        let wake = [deadline, state.next_delay_fire(), grace_end, Some(poll)]
            .into_iter()
            .flatten()
            .min();
        let event = match wake {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        if exited_at.is_none() && guard.exited() {
            exited_at = Some(Instant::now());
        }
        if exited_at.is_some_and(|t| t.elapsed() > LINGER_AFTER_EXIT) {
            out_open = false;
        }
        match event {
            Ok(Event::Out(at, data)) => state.output(at, &data)?,
            Ok(Event::Err(data)) => state.err.extend_from_slice(&data),
            Ok(Event::OutClosed) | Err(RecvTimeoutError::Disconnected) => out_open = false,
            Err(RecvTimeoutError::Timeout) => {}
        }
        state.feed_stdin()?;
        if let (Some(ended), Some(grace)) = (state.guest_ended, spec.guest_end_grace) {
            if ended.elapsed() > grace && exited_at.is_none() {
                guard.kill();
                let console = state.console_text();
                return Err(LabError::VmmDidNotExit {
                    grace,
                    console: tail(&console, 40),
                });
            }
        }
        if let (Some(deadline), Some(timeout)) = (deadline, spec.timeout) {
            if Instant::now() >= deadline {
                let diagnosis = spec.diagnose.map(|d| d()).unwrap_or_default();
                guard.kill();
                let mut log = String::from_utf8_lossy(&state.out).into_owned();
                log.push_str(&noise_free(&String::from_utf8_lossy(&state.err)));
                return Err(LabError::Timeout {
                    after: timeout,
                    phase: state.phase,
                    log: tail(&log, 60),
                    diagnosis,
                    console: state.console_text(),
                });
            }
        }
    }
    drop(state.stdin.take());
    let status = guard
        .wait()
        .map_err(|e| LabError::io(format!("waiting for {what}"), e))?;
    // Stderr may still be arriving after stdout closed.
    while let Ok(event) = rx.recv_timeout(Duration::from_millis(100)) {
        match event {
            Event::Err(data) => state.err.extend_from_slice(&data),
            Event::Out(at, data) => state.output(at, &data)?,
            Event::OutClosed => {}
        }
    }
    Ok(RawRun {
        out: state.out,
        err: state.err,
        chunks: state.chunks,
        started,
        finished: Instant::now(),
        status,
    })
}

struct State<'a> {
    spec: &'a RunSpec<'a>,
    out: Vec<u8>,
    err: Vec<u8>,
    chunks: Vec<(usize, Instant)>,
    /// Offset in `out` where the console starts, once known.
    console_from: Option<usize>,
    /// Where to look for the framing markers.
    frame_scan: usize,
    phase: &'static str,
    /// Next stdin step to send.
    step: usize,
    /// When the previous step fired (or the console started).
    step_base: Option<Instant>,
    /// Where to look for the next step's marker.
    scan_from: usize,
    stdin: Option<ChildStdin>,
    /// Passthrough has reached the end-of-run marker.
    passthrough_done: bool,
    /// When the guest kernel said it stopped.
    guest_ended: Option<Instant>,
    /// Where to look for the guest-end markers.
    end_scan: usize,
}

impl State<'_> {
    fn output(&mut self, at: Instant, data: &[u8]) -> Result<()> {
        let old_len = self.out.len();
        self.chunks.push((old_len, at));
        self.out.extend_from_slice(data);
        if self.console_from.is_none() {
            let hay = &self.out[self.frame_scan..];
            if find(hay, MARK_KVM_READY.as_bytes()).is_some() {
                self.phase = "starting the run in L1";
            }
            match find(hay, MARK_RUN_START.as_bytes()) {
                Some(pos) => {
                    let marker = self.frame_scan + pos;
                    let after = marker + MARK_RUN_START.len();
                    // The console starts after the marker's line; wait for its newline.
                    match self.out[after..].iter().position(|&b| b == b'\n') {
                        Some(p) => {
                            let start = after + p + 1;
                            self.console_from = Some(start);
                            self.scan_from = start;
                            self.step_base = Some(at);
                            self.phase = "running in L1";
                        }
                        None => self.frame_scan = marker,
                    }
                }
                None => self.frame_scan = self.out.len().saturating_sub(MAX_MARKER_LEN),
            }
        }
        if let (Some(from), None) = (self.console_from, self.guest_ended) {
            let from = from.max(self.end_scan);
            let hay = &self.out[from..];
            let run_over = find(hay, format!("\n{MARK_RUN_EXIT}").as_bytes()).is_some();
            if !run_over
                && GUEST_END_MARKERS
                    .iter()
                    .any(|m| find(hay, m.as_bytes()).is_some())
            {
                self.guest_ended = Some(at);
            }
            self.end_scan = self.out.len().saturating_sub(MAX_MARKER_LEN);
        }
        if self.spec.passthrough && !self.passthrough_done {
            if let Some(from) = self.console_from {
                let from = from.max(old_len);
                // Stop at the end-of-run marker: what follows is L1 shutting down. The marker
                // may have started in an earlier read.
                let look = from
                    .saturating_sub(MAX_MARKER_LEN)
                    .max(self.console_from.unwrap_or(0));
                let end = match find(&self.out[look..], MARK_RUN_EXIT.as_bytes()) {
                    Some(pos) => {
                        self.passthrough_done = true;
                        look + pos
                    }
                    None => self.out.len(),
                };
                let end = end.max(from);
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&self.out[from..end]);
                let _ = stdout.flush();
            }
        }
        Ok(())
    }

    fn console_text(&self) -> String {
        let from = self.console_from.unwrap_or(0);
        String::from_utf8_lossy(&self.out[from..]).replace("\r\n", "\n")
    }

    fn next_delay_fire(&self) -> Option<Instant> {
        match (self.spec.stdin.get(self.step), self.step_base) {
            (
                Some(StdinStep {
                    trigger: Trigger::Delay(d),
                    ..
                }),
                Some(base),
            ) => Some(base + *d),
            _ => None,
        }
    }

    fn feed_stdin(&mut self) -> Result<()> {
        while let (Some(step), Some(base)) = (self.spec.stdin.get(self.step), self.step_base) {
            let fire = match &step.trigger {
                Trigger::Delay(d) => Instant::now() >= base + *d,
                Trigger::Marker(m) => match find(&self.out[self.scan_from..], m.as_bytes()) {
                    Some(pos) => {
                        self.scan_from += pos + m.len();
                        true
                    }
                    None => false,
                },
            };
            if !fire {
                return Ok(());
            }
            if let Some(stdin) = self.stdin.as_mut() {
                stdin
                    .write_all(&step.data)
                    .and_then(|()| stdin.flush())
                    .map_err(|e| LabError::io(format!("writing stdin step {}", self.step), e))?;
            }
            self.step += 1;
            self.step_base = Some(Instant::now());
        }
        Ok(())
    }
}

/// QEMU's stderr without the harmless warnings TCG prints for every EPYC-Rome vCPU.
pub(crate) fn noise_free(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("TCG doesn't support requested feature"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    #[test]
    fn direct_run_collects_stdout_and_stderr() {
        let spec = RunSpec {
            framing: Framing::Direct,
            timeout: Some(Duration::from_secs(20)),
            stdin: &[],
            passthrough: false,
            merge_stderr: true,
            guest_end_grace: None,
            diagnose: None,
        };
        let cmd = sh("echo out; echo err >&2; exit 3");
        let raw = run(cmd, "sh", &spec).expect("runs");
        let text = String::from_utf8_lossy(&raw.out);
        assert!(text.contains("out") && text.contains("err"), "{text}");
        assert_eq!(raw.status.code(), Some(3));
    }

    #[test]
    fn stdin_steps_fire_on_markers() {
        let steps = [
            StdinStep {
                trigger: Trigger::Marker("ready>".into()),
                data: b"hello\n".to_vec(),
            },
            StdinStep {
                trigger: Trigger::Delay(Duration::from_millis(10)),
                data: b"bye\n".to_vec(),
            },
        ];
        let spec = RunSpec {
            framing: Framing::Direct,
            timeout: Some(Duration::from_secs(20)),
            stdin: &steps,
            passthrough: false,
            merge_stderr: true,
            guest_end_grace: None,
            diagnose: None,
        };
        let mut cmd = sh("printf 'ready>'; read a; read b; echo \"got $a $b\"");
        cmd.stdin(Stdio::piped());
        let raw = run(cmd, "sh", &spec).expect("runs");
        assert!(String::from_utf8_lossy(&raw.out).contains("got hello bye"));
    }

    #[test]
    fn vmm_lingering_after_guest_power_off_fails_fast() {
        let spec = RunSpec {
            framing: Framing::Direct,
            timeout: Some(Duration::from_secs(30)),
            stdin: &[],
            passthrough: false,
            merge_stderr: true,
            guest_end_grace: Some(Duration::from_millis(300)),
            diagnose: None,
        };
        let started = Instant::now();
        let err = run(
            sh("echo '[ 1.0] reboot: Power down'; exec sleep 30"),
            "sh",
            &spec,
        )
        .err();
        assert!(
            matches!(err, Some(LabError::VmmDidNotExit { .. })),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn timeout_kills_the_child_and_says_so() {
        let spec = RunSpec {
            framing: Framing::Direct,
            timeout: Some(Duration::from_millis(300)),
            stdin: &[],
            passthrough: false,
            merge_stderr: true,
            guest_end_grace: None,
            diagnose: Some(&|| "vCPUs: stuck".to_string()),
        };
        let started = Instant::now();
        let err = run(sh("echo started; exec sleep 30"), "sh", &spec).err();
        assert!(
            matches!(&err, Some(LabError::Timeout { diagnosis, .. }) if diagnosis == "vCPUs: stuck"),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
