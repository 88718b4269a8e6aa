//! Facts about the machine and the binary, and thread placement.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use results::{BuildInfo, HostInfo};

/// The page size (sysconf), 4096 if the kernel will not say.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as usize
    } else {
        4096
    }
}

/// CPUs this process may run on.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU the calling thread is on now, as text ("?" if unknown).
pub fn current_cpu() -> String {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on error.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu >= 0 {
        cpu.to_string()
    } else {
        "?".into()
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// User plus system CPU seconds used by this process so far.
pub fn process_cpu_seconds() -> f64 {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => f64::NAN,
    }
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The machine, as far as the kernel tells.
pub fn host_info() -> HostInfo {
    let uname = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uname
            .as_ref()
            .map(|u| f(u).to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0);
    HostInfo {
        hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
        kernel: field(|u| u.release()),
        arch: field(|u| u.machine()),
        cpu_model,
        cpus: cpu_count(),
        memory_bytes,
        is_root: is_root(),
    }
}

/// Whether this binary was built to be measured.
pub fn build_info() -> BuildInfo {
    let opt_level = env!("MEMSYNC_BUILD_OPT_LEVEL").to_owned();
    let debug_assertions = cfg!(debug_assertions);
    let (git_revision, git_dirty) = git_state(Path::new(env!("CARGO_MANIFEST_DIR")));
    BuildInfo {
        // Cargo tells build scripts only "debug" or "release": the output
        // directory, not the profile's name; "debug" is the dev profile.
        profile: match env!("MEMSYNC_BUILD_PROFILE") {
            "debug" => "dev".to_owned(),
            other => other.to_owned(),
        },
        fit_for_numbers: !debug_assertions && (opt_level == "3" || opt_level == "2"),
        opt_level,
        debug_assertions,
        git_revision,
        git_dirty,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Why numbers from this build should not be trusted, if they should not.
pub fn build_warning(build: &BuildInfo) -> Option<String> {
    (!build.fit_for_numbers).then(|| {
        format!(
            "this harness was built with opt-level {} and debug assertions {}: \
             its numbers are not fit for comparison (use the default `cargo run` profile or --release)",
            build.opt_level,
            if build.debug_assertions { "on" } else { "off" }
        )
    })
}

fn git_state(dir: &Path) -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let rev = run(&["rev-parse", "HEAD"]);
    let dirty = rev
        .as_ref()
        .and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    (rev, dirty)
}

/// Adds one sample of `cpu` to a placement map.
pub fn count_cpu(map: &mut BTreeMap<String, u64>, cpu: String) {
    *map.entry(cpu).or_insert(0) += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_are_plausible() {
        let h = host_info();
        assert!(h.cpus >= 1);
        assert!(!h.kernel.is_empty());
        assert!(page_size() >= 4096 && page_size().is_power_of_two());
        assert!(process_cpu_seconds() >= 0.0);
    }

    #[test]
    fn pinning_moves_the_thread() {
        std::thread::spawn(|| {
            pin_current_thread(0).unwrap();
            assert_eq!(current_cpu(), "0");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn test_builds_are_flagged_unfit() {
        // The test profile turns debug assertions on.
        let b = build_info();
        assert_eq!(b.fit_for_numbers, !cfg!(debug_assertions));
        assert_eq!(build_warning(&b).is_some(), cfg!(debug_assertions));
    }
}
