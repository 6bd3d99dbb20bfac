//! How guest RAM of a given size is laid out around the 32-bit hole, and the
//! e820-style map the guest is told about.

use crate::layout::*;

/// A range of guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub size: u64,
}

impl Range {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// E820 entry types (ACPI 6.5 §15, "System Address Map Interfaces").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MemoryType {
    Ram = 1,
    Reserved = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    pub range: Range,
    pub kind: MemoryType,
}

/// Guest RAM: one region below the 32-bit hole and, for larger guests, one
/// region above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<Range> {
    let low = mem_size.min(MEM_32BIT_GAP_START);
    let mut regions = vec![Range {
        start: 0,
        size: low,
    }];
    if mem_size > low {
        regions.push(Range {
            start: RAM_64BIT_START,
            size: mem_size - low,
        });
    }
    regions
}

/// End of RAM below 4 GiB.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MEM_32BIT_GAP_START)
}

/// The 64-bit PCI MMIO window: above all RAM and 4 GiB, aligned.
pub fn mmio64_window(mem_size: u64) -> Range {
    let top = ram_regions(mem_size)
        .last()
        .map_or(RAM_64BIT_START, Range::end)
        .max(RAM_64BIT_START);
    let start = top.div_ceil(MMIO64_ALIGN) * MMIO64_ALIGN;
    Range {
        start,
        size: MMIO64_SIZE,
    }
}

/// The map the guest firmware interface (e820 / PVH memmap) reports.
///
/// The legacy area from the EBDA to 1 MiB (which holds the ACPI tables) and
/// the ECAM window are reserved; the ECAM reservation is what lets Linux
/// trust MCFG.
pub fn guest_memory_map(mem_size: u64) -> Vec<MapEntry> {
    let mut map = Vec::new();
    let low_end = low_ram_end(mem_size);
    map.push(MapEntry {
        range: Range {
            start: 0,
            size: EBDA_START,
        },
        kind: MemoryType::Ram,
    });
    map.push(MapEntry {
        range: Range {
            start: EBDA_START,
            size: HIGH_RAM_START - EBDA_START,
        },
        kind: MemoryType::Reserved,
    });
    if low_end > HIGH_RAM_START {
        map.push(MapEntry {
            range: Range {
                start: HIGH_RAM_START,
                size: low_end - HIGH_RAM_START,
            },
            kind: MemoryType::Ram,
        });
    }
    map.push(MapEntry {
        range: Range {
            start: ECAM_START,
            size: ECAM_SIZE,
        },
        kind: MemoryType::Reserved,
    });
    if let Some(high) = ram_regions(mem_size).get(1) {
        map.push(MapEntry {
            range: *high,
            kind: MemoryType::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region_and_no_high_ram() {
        let r = ram_regions(256 << 20);
        assert_eq!(
            r,
            vec![Range {
                start: 0,
                size: 256 << 20
            }]
        );
        let map = guest_memory_map(256 << 20);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryType::Ram)
            .map(|e| e.range.size)
            .sum();
        assert_eq!(ram, (256 << 20) - (HIGH_RAM_START - EBDA_START));
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        let r = ram_regions(5 << 30);
        assert_eq!(
            r[0],
            Range {
                start: 0,
                size: 3 << 30
            }
        );
        assert_eq!(
            r[1],
            Range {
                start: 4 << 30,
                size: 2 << 30
            }
        );
        let w = mmio64_window(5 << 30);
        assert_eq!(w.start, 6 << 30);
        assert_eq!(mmio64_window(1 << 30).start, 4 << 30);
        // Entries are sorted and never overlap.
        let map = guest_memory_map(5 << 30);
        for pair in map.windows(2) {
            assert!(pair[0].range.end() <= pair[1].range.start);
        }
    }
}
