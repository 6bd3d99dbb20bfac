//! What a lab run produced: the console (everything ivmm printed, which is the L2 guest's
//! serial console plus ivmm's own messages), exit status, host-side timings and the L1 log.

use std::time::Duration;

use crate::error::{tail, LabError, Result};
use crate::guest::{MARK_CMD_BEGIN, MARK_CMD_EXIT, MARK_GUEST_INIT};

/// One console line with the host time its first byte arrived, relative to ivmm's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    pub at: Duration,
    pub text: String,
}

/// The result of one `run_ivmm`/`run_shell`/`boot_guest` run.
#[derive(Debug, Clone)]
pub struct LabOutcome {
    /// Everything the ivmm process (or the shell script) printed, stdout and stderr, with
    /// `\r\n` turned into `\n`.
    pub console: String,
    /// Exit status of the ivmm process (for `run_shell`: of the script); 128+N for signal N.
    pub ivmm_exit: i32,
    /// Wall time of the whole run (for the nested lab: QEMU start to QEMU exit).
    pub elapsed: Duration,
    /// Nested lab: L1 console output outside the ivmm run plus QEMU's stderr. Direct: empty.
    pub l1_log: String,
    /// Nested lab: QEMU start to the moment ivmm was started in L1. Direct: `None`.
    pub l1_boot: Option<Duration>,
    /// The console split in lines, each with its host-side arrival time since ivmm started.
    pub lines: Vec<ConsoleLine>,
}

/// What the guest command (`ivmm.cmd=`) printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCmd {
    pub output: String,
    pub exit: i32,
}

impl LabOutcome {
    /// When the first console byte arrived, relative to ivmm's start (host clock).
    pub fn first_output_at(&self) -> Option<Duration> {
        self.lines.first().map(|l| l.at)
    }

    /// When the first console line containing `marker` started arriving, relative to ivmm's
    /// start (host clock).
    pub fn marker_at(&self, marker: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|l| l.text.contains(marker))
            .map(|l| l.at)
    }

    /// When the L2 guest's init printed its marker (the guest reached userspace).
    pub fn guest_init_at(&self) -> Option<Duration> {
        self.marker_at(MARK_GUEST_INIT)
    }

    /// The guest command's output (lines between `IVMM-CMD-BEGIN` and `IVMM-CMD-EXIT=`) and
    /// exit code. Errors with the console tail if the guest never reported a result.
    pub fn guest_cmd(&self) -> Result<GuestCmd> {
        let no_result = || LabError::NoGuestResult {
            ivmm_exit: self.ivmm_exit,
            console: tail(&self.console, 60),
        };
        let begin = self
            .lines
            .iter()
            .position(|l| l.text.trim_end() == MARK_CMD_BEGIN)
            .ok_or_else(no_result)?;
        let mut output = String::new();
        for line in &self.lines[begin + 1..] {
            // The marker may follow output that did not end in a newline.
            if let Some(pos) = line.text.find(MARK_CMD_EXIT) {
                output.push_str(&line.text[..pos]);
                let exit = line.text[pos + MARK_CMD_EXIT.len()..]
                    .trim()
                    .parse()
                    .map_err(|_| no_result())?;
                return Ok(GuestCmd { output, exit });
            }
            output.push_str(&line.text);
            output.push('\n');
        }
        Err(no_result())
    }

    /// The guest command's output if it exited 0; otherwise an error with its output.
    pub fn guest_cmd_ok(&self) -> Result<String> {
        let cmd = self.guest_cmd()?;
        if cmd.exit == 0 {
            Ok(cmd.output)
        } else {
            Err(LabError::GuestCmdFailed {
                exit: cmd.exit,
                output: cmd.output,
            })
        }
    }
}

/// Splits raw console bytes into lines with arrival times. `chunks` holds, in order, the byte
/// offset where each received chunk started and its arrival time (relative to ivmm's start);
/// a line gets the time of the chunk holding its first byte.
pub(crate) fn timed_lines(bytes: &[u8], chunks: &[(usize, Duration)]) -> Vec<ConsoleLine> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| start + p);
        let idx = chunks.partition_point(|&(off, _)| off <= start);
        let at = idx
            .checked_sub(1)
            .and_then(|i| chunks.get(i))
            .map_or(Duration::ZERO, |&(_, t)| t);
        let text = String::from_utf8_lossy(&bytes[start..end]);
        lines.push(ConsoleLine {
            at,
            text: text.trim_end_matches('\r').to_string(),
        });
        start = end + 1;
    }
    lines
}

/// `\r\n` → `\n`, lossy UTF-8.
pub(crate) fn normalize_console(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(console: &str) -> LabOutcome {
        let chunks = [(0, Duration::from_millis(5))];
        LabOutcome {
            console: console.to_string(),
            ivmm_exit: 0,
            elapsed: Duration::ZERO,
            l1_log: String::new(),
            l1_boot: None,
            lines: timed_lines(console.as_bytes(), &chunks),
        }
    }

    #[test]
    fn guest_cmd_extracts_output_and_exit() {
        let o =
            outcome("boot\r\nIVMM-GUEST-INIT\r\nIVMM-CMD-BEGIN\r\n2\r\nx\r\nIVMM-CMD-EXIT=3\r\n");
        let cmd = o.guest_cmd().expect("result");
        assert_eq!(
            cmd,
            GuestCmd {
                output: "2\nx\n".into(),
                exit: 3
            }
        );
        assert!(matches!(
            o.guest_cmd_ok(),
            Err(LabError::GuestCmdFailed { exit: 3, .. })
        ));
    }

    #[test]
    fn guest_cmd_output_without_trailing_newline() {
        let o = outcome("IVMM-CMD-BEGIN\nabcIVMM-CMD-EXIT=0\n");
        assert_eq!(o.guest_cmd_ok().expect("ok"), "abc");
    }

    #[test]
    fn guest_cmd_missing_result_is_an_error() {
        let o = outcome("IVMM-GUEST-INIT\nIVMM-CMD-BEGIN\nKernel panic\n");
        assert!(matches!(o.guest_cmd(), Err(LabError::NoGuestResult { .. })));
    }

    #[test]
    fn timed_lines_take_the_time_of_the_chunk_holding_their_first_byte() {
        let chunks = [(0, Duration::from_secs(1)), (4, Duration::from_secs(2))];
        let lines = timed_lines(b"ab\ncd\nef", &chunks);
        let at: Vec<_> = lines
            .iter()
            .map(|l| (l.text.as_str(), l.at.as_secs()))
            .collect();
        assert_eq!(at, vec![("ab", 1), ("cd", 1), ("ef", 2)]);
    }
}
