//! The MC146818-compatible CMOS RTC at ports 0x70/0x71: wall-clock time (UTC,
//! BCD, 24-hour) read from the host clock on every access, plus plain CMOS
//! RAM. Alarms and periodic interrupts are not implemented; Linux's rtc_cmos
//! and the boot-time clock read only need the time registers.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::BusDevice;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
/// Bit 7 of the index port disables NMIs on a PC; it is not part of the index.
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
/// Century register announced by the FADT's CENTURY field on PCs.
pub const REG_CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz rate; update-in-progress is never
/// set because our time registers are always consistent.
const STATUS_A_DEFAULT: u8 = 0x26;
/// Status B: 24-hour mode (bit 1); bit 2 clear means BCD.
const STATUS_B_24H: u8 = 0x02;
const STATUS_B_BINARY: u8 = 0x04;
/// Status D: valid RAM and time (battery good).
const STATUS_D_VRT: u8 = 0x80;

pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: fn() -> u64,
}

fn host_unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(host_unix_time)
    }

    /// A CMOS whose clock reads seconds since the Unix epoch from `clock`.
    pub fn with_clock(clock: fn() -> u64) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_STATUS_A as usize] = STATUS_A_DEFAULT;
        ram[REG_STATUS_B as usize] = STATUS_B_24H;
        ram[REG_STATUS_D as usize] = STATUS_D_VRT;
        Self {
            index: 0,
            ram,
            clock,
        }
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let t = DateTime::from_unix((self.clock)());
        let value = match reg {
            REG_SECONDS => t.second,
            REG_MINUTES => t.minute,
            REG_HOURS => t.hour,
            REG_WEEKDAY => t.weekday,
            REG_DAY => t.day,
            REG_MONTH => t.month,
            REG_YEAR => (t.year % 100) as u8,
            REG_CENTURY => (t.year / 100) as u8,
            REG_STATUS_C => {
                // Reading C acknowledges interrupts; none are ever raised.
                return 0;
            }
            _ => return self.ram[usize::from(reg & INDEX_MASK)],
        };
        if self.ram[REG_STATUS_B as usize] & STATUS_B_BINARY != 0 {
            value
        } else {
            to_bcd(value)
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            // Setting the clock from the guest is not supported: time always
            // follows the host. Keep the format bits of status B, which
            // the guest may change.
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY | REG_STATUS_C | REG_STATUS_D => {}
            _ => self.ram[usize::from(reg & INDEX_MASK)] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            INDEX_OFFSET => self.index,
            DATA_OFFSET => self.read_register(self.index),
            _ => return,
        };
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            INDEX_OFFSET => self.index = value & INDEX_MASK,
            DATA_OFFSET => self.write_register(self.index, value),
            _ => {}
        }
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// A UTC calendar date and time, as the RTC registers hold it.
#[derive(Debug, PartialEq, Eq)]
struct DateTime {
    year: u32,
    month: u8,
    day: u8,
    weekday: u8, // 1 = Sunday, as on a PC RTC
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    /// Converts Unix time with the days-to-civil algorithm (proleptic
    /// Gregorian calendar).
    fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // 1970-01-01 was a Thursday (weekday 5 with Sunday = 1).
        let weekday = ((days + 4) % 7) as u8 + 1;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + u64::from(month <= 2)) as u32;
        Self {
            year,
            month,
            day,
            weekday,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(cmos: &mut Cmos, reg: u8) -> u8 {
        cmos.write(INDEX_OFFSET, &[reg | 0x80]);
        let mut b = [0u8];
        cmos.read(DATA_OFFSET, &mut b);
        b[0]
    }

    #[test]
    fn civil_conversion_matches_known_dates() {
        // 2000-02-29 12:34:56 UTC, a Tuesday.
        let t = DateTime::from_unix(951_827_696);
        assert_eq!(
            t,
            DateTime {
                year: 2000,
                month: 2,
                day: 29,
                weekday: 3,
                hour: 12,
                minute: 34,
                second: 56
            }
        );
        // 2026-11-26 00:00:00 UTC, a Thursday.
        let t = DateTime::from_unix(1_795_651_200);
        assert_eq!((t.year, t.month, t.day, t.weekday), (2026, 11, 26, 5));
    }

    #[test]
    fn registers_are_bcd_by_default_and_binary_on_request() {
        let mut cmos = Cmos::with_clock(|| 951_827_696);
        assert_eq!(read(&mut cmos, REG_SECONDS), 0x56);
        assert_eq!(read(&mut cmos, REG_HOURS), 0x12);
        assert_eq!(read(&mut cmos, REG_YEAR), 0x00);
        assert_eq!(read(&mut cmos, REG_CENTURY), 0x20);
        assert_eq!(read(&mut cmos, REG_STATUS_D), STATUS_D_VRT);
        cmos.write(INDEX_OFFSET, &[REG_STATUS_B]);
        cmos.write(DATA_OFFSET, &[STATUS_B_24H | STATUS_B_BINARY]);
        assert_eq!(read(&mut cmos, REG_SECONDS), 56);
        assert_eq!(read(&mut cmos, REG_MONTH), 2);
    }

    #[test]
    fn ram_is_readable_and_time_is_not_writable() {
        let mut cmos = Cmos::with_clock(|| 0);
        cmos.write(INDEX_OFFSET, &[0x40]);
        cmos.write(DATA_OFFSET, &[0xab]);
        assert_eq!(read(&mut cmos, 0x40), 0xab);
        cmos.write(INDEX_OFFSET, &[REG_SECONDS]);
        cmos.write(DATA_OFFSET, &[0x59]);
        assert_eq!(read(&mut cmos, REG_SECONDS), 0x00);
        let mut wide = [0xffu8; 4];
        cmos.read(7, &mut wide);
        assert_eq!(wide, [0; 4]);
    }
}
