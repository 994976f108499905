//! `vpnnat-godown MOUNTPOINT`: a power cut for one ext4 file system, for
//! the power-loss scenario (tests/vm/powerloss.sh). Calls the
//! EXT4_IOC_SHUTDOWN ioctl with EXT4_GOING_FLAGS_NOLOGFLUSH, as xfstests'
//! `godown` does: the file system stops at once, the journal is not
//! flushed and dirty page-cache data is never written, so after unmount
//! and mount what is on disk is what a power cut at this instant leaves
//! (only what was fsynced, or committed by the journal already).

use std::os::fd::AsRawFd;
use std::process::ExitCode;

/// `_IOR('X', 125, __u32)` from linux/ext4.h (also XFS_IOC_GOINGDOWN).
const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
/// Neither sync the data nor flush the log.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 0x2;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: vpnnat-godown MOUNTPOINT");
        return ExitCode::from(2);
    };
    let dir = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vpnnat-godown: {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    let flags: u32 = EXT4_GOING_FLAGS_NOLOGFLUSH;
    // SAFETY: the ioctl reads one u32 through the pointer, which points to
    // a live local; the descriptor is open for the duration of the call.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &flags as *const u32) };
    if r != 0 {
        eprintln!(
            "vpnnat-godown: EXT4_IOC_SHUTDOWN on {}: {}",
            path.to_string_lossy(),
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
