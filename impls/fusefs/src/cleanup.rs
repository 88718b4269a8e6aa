//! Finding and removing FUSE mounts that a crashed run left behind.
//!
//! Every mount of this crate has a source name starting with
//! [`FS_NAME_PREFIX`] (`msb-`), so `/proc/self/mountinfo` tells ours apart
//! from anybody else's. A leftover's daemon is usually dead, so the mount
//! only answers `ENOTCONN`; a lazy detach (`MNT_DETACH`) removes it without
//! touching the file system.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::options::FS_NAME_PREFIX;

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount.
    pub mount_id: u64,
    /// Device number of the mounted file system: major.
    pub major: u32,
    /// Device number of the mounted file system: minor.
    pub minor: u32,
    /// Where it is mounted, unescaped.
    pub mount_point: PathBuf,
    /// File system type, e.g. `fuse` or `fuse.nbdfuse`.
    pub fs_type: String,
    /// Source name (`fsname=`), unescaped.
    pub source: String,
}

impl MountEntry {
    /// Whether this is a FUSE mount (`fuse`, `fuse.<subtype>`, `fuseblk`).
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }
}

/// The result of [`unmount_leftovers`].
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Mounts that were detached.
    pub unmounted: Vec<MountEntry>,
    /// Mounts whose connection was aborted through fusectl first.
    pub aborted: Vec<MountEntry>,
    /// Mounts that could not be detached, with the reason.
    pub failed: Vec<(MountEntry, nix::errno::Errno)>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("reading /proc/self/mountinfo: {0}")]
    Read(#[from] std::io::Error),
    /// A line did not have the documented layout (proc(5)).
    #[error("mountinfo line {line:?} is malformed: {reason}")]
    Parse { line: String, reason: &'static str },
    /// A prefix that could match mounts this crate did not make.
    #[error(
        "prefix {prefix:?} must start with {FS_NAME_PREFIX:?} so only this project's mounts match"
    )]
    Prefix { prefix: String },
}

/// All mounts of the calling process's mount namespace.
pub fn mounts() -> Result<Vec<MountEntry>, CleanupError> {
    // Bytes, not a String: mount points need not be UTF-8.
    let text = std::fs::read("/proc/self/mountinfo")?;
    parse_mountinfo(&text)
}

/// FUSE mounts whose source starts with [`FS_NAME_PREFIX`].
pub fn leftover_mounts() -> Result<Vec<MountEntry>, CleanupError> {
    matching(FS_NAME_PREFIX)
}

/// Detaches every FUSE mount whose source starts with `prefix` (which itself
/// must start with [`FS_NAME_PREFIX`]). Mounts stacked on top of each other
/// are detached innermost first.
pub fn unmount_leftovers(prefix: &str) -> Result<CleanupReport, CleanupError> {
    if !prefix.starts_with(FS_NAME_PREFIX) {
        return Err(CleanupError::Prefix {
            prefix: prefix.to_string(),
        });
    }
    let mut found = matching(prefix)?;
    // Held while aborting; unmounted again if it was mounted for this.
    let _fusectl = (!found.is_empty()).then(Fusectl::ensure);
    // Longer paths first so a mount on a directory inside another leftover
    // goes before its parent.
    found.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
    let mut report = CleanupReport::default();
    for entry in found {
        // A leftover's daemon may be alive but stuck (or its process stuck
        // exiting); aborting fails every pending request so that nothing
        // waits on the mount any more.
        if let Ok(true) = abort_connection(entry.major, entry.minor) {
            report.aborted.push(entry.clone());
        }
        match nix::mount::umount2(&entry.mount_point, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => report.unmounted.push(entry),
            Err(e) => report.failed.push((entry, e)),
        }
    }
    Ok(report)
}

/// Where the fusectl file system is usually mounted.
pub const FUSECTL: &str = "/sys/fs/fuse/connections";

/// fusectl at [`FUSECTL`], mounted for as long as this lives if it was not
/// there (root only), so a leftover's connection can be aborted: a process
/// stuck exiting with a dirty mapping of a file it served itself is freed
/// by nothing else. Unmounts on drop what it mounted, and only that.
#[derive(Debug)]
pub struct Fusectl {
    mounted_here: bool,
}

impl Fusectl {
    pub fn ensure() -> Self {
        if Self::is_mounted() {
            return Self {
                mounted_here: false,
            };
        }
        let mounted = nix::mount::mount(
            Some("fusectl"),
            FUSECTL,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        if let Err(e) = &mounted {
            tracing::debug!("mounting fusectl at {FUSECTL}: {e}");
        }
        Self {
            mounted_here: mounted.is_ok(),
        }
    }

    /// Whether fusectl is mounted at [`FUSECTL`].
    pub fn is_mounted() -> bool {
        mounts()
            .map(|all| all.iter().any(|m| m.mount_point == Path::new(FUSECTL)))
            .unwrap_or(false)
    }
}

impl Drop for Fusectl {
    fn drop(&mut self) {
        if self.mounted_here {
            if let Err(e) = nix::mount::umount2(FUSECTL, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!("unmounting fusectl from {FUSECTL}: {e}");
            }
        }
    }
}

/// Aborts the FUSE connection of the mount with device `major:minor`
/// through fusectl: every pending and future request fails with
/// `ENOTCONN`, so processes blocked on the mount (including one stuck
/// exiting with a dirty mapping of a file it served itself) are freed.
///
/// Returns `Ok(false)` when fusectl is not mounted (as root, `mount -t
/// fusectl none /sys/fs/fuse/connections` mounts it) or the connection is
/// already gone.
pub fn abort_connection(major: u32, minor: u32) -> std::io::Result<bool> {
    // fusectl names connections by the kernel's dev_t (major << 20 | minor).
    let id = (u64::from(major) << 20) | u64::from(minor);
    let abort = Path::new(FUSECTL).join(id.to_string()).join("abort");
    match std::fs::write(&abort, b"1") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn matching(prefix: &str) -> Result<Vec<MountEntry>, CleanupError> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.is_fuse() && m.source.starts_with(prefix))
        .collect())
}

/// The entry mounted at `path` with device `major:minor`, if it is still there.
pub(crate) fn find_mount(
    path: &Path,
    major: u32,
    minor: u32,
) -> Result<Option<MountEntry>, CleanupError> {
    Ok(mounts()?
        .into_iter()
        .find(|m| m.mount_point == path && m.major == major && m.minor == minor))
}

/// Parses mountinfo text (proc(5)):
/// `id parent major:minor root mount_point options [optional...] - fstype source super_options`.
pub fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, CleanupError> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Result<MountEntry, CleanupError> {
    let bad = |reason| CleanupError::Parse {
        line: String::from_utf8_lossy(line).into_owned(),
        reason,
    };
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let sep = fields
        .iter()
        .position(|f| *f == b"-")
        .ok_or_else(|| bad("no `-` separator"))?;
    if sep < 6 || fields.len() < sep + 3 {
        return Err(bad("too few fields"));
    }
    let text = |field: &[u8]| String::from_utf8_lossy(field).into_owned();
    let mount_id = text(fields[0])
        .parse()
        .map_err(|_| bad("mount id is not a number"))?;
    let (major, minor) = text(fields[2])
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| bad("device is not major:minor"))?;
    Ok(MountEntry {
        mount_id,
        major,
        minor,
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        fs_type: text(fields[sep + 1]),
        source: text(&unescape(fields[sep + 2])),
    })
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash).
fn unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_root_fusectl_is_mounted_while_held_and_left_as_found() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: mounting fusectl needs root");
            return;
        }
        if !Path::new("/sys/fs/fuse").exists() {
            eprintln!("skipping: this kernel has no /sys/fs/fuse");
            return;
        }
        let before = Fusectl::is_mounted();
        let held = Fusectl::ensure();
        assert!(Fusectl::is_mounted());
        drop(held);
        assert_eq!(Fusectl::is_mounted(), before);
    }

    const SAMPLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
97 27 0:52 / /tmp/msb\\040fuse/mnt rw,nosuid,nodev,relatime - fuse msb-fusefs rw,user_id=0,group_id=0
98 27 0:53 / /tmp/nbd rw,nosuid,nodev,relatime - fuse.nbdfuse nbdfuse rw,user_id=0,group_id=0
99 27 0:54 / /tmp/other rw - tmpfs msb-not-fuse rw
";

    #[test]
    fn parses_fields_and_unescapes_paths() {
        let all = parse_mountinfo(SAMPLE.as_bytes()).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[1].mount_point, PathBuf::from("/run/netns"));
        assert_eq!(all[1].fs_type, "ext4");
        let ours = &all[2];
        assert_eq!(ours.mount_id, 97);
        assert_eq!((ours.major, ours.minor), (0, 52));
        assert_eq!(ours.mount_point, PathBuf::from("/tmp/msb fuse/mnt"));
        assert_eq!(ours.source, "msb-fusefs");
        assert!(ours.is_fuse());
        assert!(all[3].is_fuse());
        assert!(!all[4].is_fuse());
    }

    #[test]
    fn leftovers_are_fuse_and_prefixed() {
        let all = parse_mountinfo(SAMPLE.as_bytes()).unwrap();
        let ours: Vec<_> = all
            .iter()
            .filter(|m| m.is_fuse() && m.source.starts_with(FS_NAME_PREFIX))
            .collect();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].mount_id, 97);
    }

    #[test]
    fn malformed_lines_are_named() {
        let err = parse_mountinfo(b"1 2 3").unwrap_err();
        assert!(err.to_string().contains("\"1 2 3\""));
        assert!(parse_mountinfo(b"x 1 0:1 / /a rw - fuse s rw").is_err());
        assert!(parse_mountinfo(b"1 1 01 / /a rw - fuse s rw").is_err());
    }

    #[test]
    fn unescape_leaves_plain_backslashes() {
        assert_eq!(unescape(b"a\\040b\\134c"), b"a b\\c");
        assert_eq!(unescape(b"end\\04"), b"end\\04");
        assert_eq!(unescape(b"x\\9zz"), b"x\\9zz");
        assert_eq!(unescape(b"\\377"), [0xff]);
        assert_eq!(unescape(b"\\777"), b"\\777");
    }

    #[test]
    fn prefixes_outside_ours_are_refused() {
        assert!(matches!(
            unmount_leftovers(""),
            Err(CleanupError::Prefix { .. })
        ));
        assert!(matches!(
            unmount_leftovers("fuse"),
            Err(CleanupError::Prefix { .. })
        ));
    }
}
