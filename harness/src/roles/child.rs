//! The runner's side of a role: one child process, owned.
//!
//! [`RoleProcess`] owns the child: dropping it kills and reaps the process,
//! so an error anywhere in a cell leaves no role running. Every wait has a
//! deadline; a role that crashes or hangs becomes an error carrying the tail
//! of its standard error.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::protocol::{RoleCommand, RoleEvent, MAX_LINE};

/// How much of a role's standard error is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// Errors talking to a role.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("starting role `{role}`: {source}")]
    Spawn {
        role: String,
        #[source]
        source: std::io::Error,
    },
    #[error("role `{role}` {what}; its stderr ends with:\n{stderr}")]
    Failed {
        role: String,
        what: String,
        stderr: String,
    },
}

/// One role child process.
#[derive(Debug)]
pub struct RoleProcess {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Result<RoleEvent, String>>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    /// Reaped after a clean exit: its process group id may be reused, so
    /// it must not be signalled again.
    reaped: bool,
}

impl RoleProcess {
    /// Starts `command` (a `harness role ...` invocation, possibly wrapped to
    /// run in a namespace) with piped standard streams.
    pub fn spawn(role: &str, mut command: Command) -> Result<Self, RoleError> {
        // Its own process group, so killing the role also kills anything it
        // forked (a wrapper, a shell) that still holds its pipes.
        let mut child = command
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RoleError::Spawn {
                role: role.to_owned(),
                source,
            })?;
        let (tx, events) = mpsc::channel();
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(std::thread::spawn(move || read_events(stdout, tx)));
        }
        if let Some(mut stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let Ok(mut t) = tail.lock() else { break };
                    t.extend_from_slice(&buf[..n]);
                    let excess = t.len().saturating_sub(STDERR_TAIL);
                    t.drain(..excess);
                }
            }));
        }
        Ok(Self {
            role: role.to_owned(),
            stdin: child.stdin.take(),
            child,
            events,
            stderr_tail,
            readers,
            reaped: false,
        })
    }

    /// Kills the role's whole process group and reaps the role.
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // The group may already be gone; that is the goal anyway.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    fn failed(&mut self, what: impl Into<String>) -> RoleError {
        self.kill();
        // The readers end once every holder of the pipes is dead, and then
        // the stderr tail holds the role's last words.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stderr = self
            .stderr_tail
            .lock()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default();
        RoleError::Failed {
            role: self.role.clone(),
            what: what.into(),
            stderr,
        }
    }

    /// The next event, waiting at most `timeout`. A role that exits, hangs
    /// or reports an error is killed and becomes [`RoleError::Failed`].
    pub fn next_event(&mut self, timeout: Duration) -> Result<RoleEvent, RoleError> {
        match self.events.recv_timeout(timeout) {
            Ok(Ok(RoleEvent::Error { message })) => {
                Err(self.failed(format!("reported: {message}")))
            }
            Ok(Ok(event)) => Ok(event),
            Ok(Err(bad)) => Err(self.failed(format!("sent a bad message: {bad}"))),
            Err(RecvTimeoutError::Timeout) => {
                Err(self.failed(format!("sent nothing within {timeout:?} (killed)")))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(self.failed(format!("exited ({status}) without answering")))
            }
        }
    }

    /// Sends a command.
    pub fn send(&mut self, command: &RoleCommand) -> Result<(), RoleError> {
        let mut line = serde_json::to_vec(command).map_err(|e| self.failed(e.to_string()))?;
        line.push(b'\n');
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&line).and_then(|()| stdin.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        written.map_err(|e| self.failed(format!("did not take a command: {e}")))
    }

    /// Asks the role to stop and returns its last event (`stopped`).
    pub fn stop(mut self, timeout: Duration) -> Result<RoleEvent, RoleError> {
        self.send(&RoleCommand::Stop)?;
        self.stdin = None;
        let last = self.next_event(timeout)?;
        match self.child.wait() {
            Ok(status) if status.success() => {
                self.reaped = true;
                Ok(last)
            }
            Ok(status) => Err(self.failed(format!("exited with {status} after stopping"))),
            Err(e) => Err(self.failed(format!("could not be reaped: {e}"))),
        }
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        // Killing an exited child fails harmlessly; waiting reaps it so no
        // zombie outlives the cell.
        self.kill();
    }
}

/// Reads JSON-lines events until the pipe closes, bounding each line.
fn read_events(stdout: impl Read, tx: mpsc::Sender<Result<RoleEvent, String>>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => {
                let _ = tx.send(Err(format!("a line longer than {MAX_LINE} bytes")));
                return;
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                let event = serde_json::from_str(text.trim())
                    .map_err(|e| format!("{e} in {:?}", text.trim()));
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_role(script: &str) -> RoleProcess {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        RoleProcess::spawn("fake", cmd).unwrap()
    }

    const READY: &str = r#"{"event":"ready","addr":"127.0.0.1:1","size":4096,"sha256":"ab"}"#;
    const STOPPED: &str = r#"{"event":"stopped","serve":{"requests":2,"bytes_received":3,"bytes_sent":4,"peak_in_flight":1},"cpu_s":0.5}"#;

    #[test]
    fn a_well_behaved_role_is_ready_then_stops() {
        let mut role = fake_role(&format!("echo '{READY}'; read cmd; echo '{STOPPED}'"));
        let ready = role.next_event(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(ready, RoleEvent::Ready { size: 4096, .. }),
            "{ready:?}"
        );
        let last = role.stop(Duration::from_secs(10)).unwrap();
        assert!(matches!(last, RoleEvent::Stopped { serve, .. } if serve.requests == 2));
    }

    #[test]
    fn a_crashing_role_is_an_error_with_its_stderr() {
        let mut role = fake_role("echo 'cannot bind 10.0.0.1:0' >&2; exit 3");
        let err = role
            .next_event(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exited") && err.contains("cannot bind"),
            "{err}"
        );
    }

    #[test]
    fn a_hanging_role_is_killed_after_the_timeout() {
        let mut role = fake_role("echo started >&2; sleep 30");
        let start = std::time::Instant::now();
        let err = role
            .next_event(Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(err.contains("killed") && err.contains("started"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "did not stop waiting"
        );
    }

    #[test]
    fn garbage_and_errors_from_a_role_are_errors() {
        let mut role = fake_role("echo 'not json'; sleep 5");
        let err = role
            .next_event(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad message"), "{err}");
        let mut role = fake_role(r#"echo '{"event":"error","message":"disk full"}'; sleep 5"#);
        let err = role
            .next_event(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("disk full"), "{err}");
        let mut role = fake_role("head -c 70000 /dev/zero | tr '\\0' x; echo; sleep 5");
        let err = role
            .next_event(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than"), "{err}");
    }

    #[test]
    fn dropping_the_guard_kills_the_child() {
        let role = fake_role("sleep 30");
        let pid = role.child.id();
        drop(role);
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(!alive, "child {pid} still exists after drop");
    }
}
