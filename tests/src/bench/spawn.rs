//! Child processes of the benchmark: started in a namespace (`ip netns exec`, which execs in
//! place, so the child's pid is the program's), with a high file-descriptor limit and a
//! parent-death signal (so nothing outlives a crashed orchestrator), their output read line by
//! line on threads.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{libc, sys::signal::Signal, unistd::Pid};

/// File descriptors every child should be allowed: 10,000 relayed connections are 20,000
/// sockets in the relay. Without CAP_SYS_RESOURCE the hard limit cannot be raised; children
/// then get the inherited hard limit, and the memory scenario sizes itself to fit.
pub const NOFILE: u64 = 1 << 17;

/// Lines of stderr kept for error messages.
const TAIL: usize = 40;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

/// A running child.
pub struct Proc {
    /// Short name for messages.
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<(Stream, String)>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// Starts `program ARGS` inside network namespace `ns` (or here, with `None`).
///
/// Must be called from the main thread: the parent-death signal fires when the *thread* that
/// forked exits.
pub fn spawn<S: AsRef<OsStr>>(
    name: &str,
    ns: Option<&str>,
    program: &Path,
    args: &[S],
    env: &[(&str, &str)],
) -> Result<Proc> {
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    };
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    // SAFETY: only async-signal-safe calls (prctl, setrlimit) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                // No CAP_SYS_RESOURCE: at least the soft limit up to the hard one.
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))?;
    let (tx, lines) = mpsc::channel();
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    pump(stdout, Stream::Out, tx.clone(), None);
    pump(stderr, Stream::Err, tx, Some(tail.clone()));
    Ok(Proc {
        name: name.to_owned(),
        stdin: child.stdin.take(),
        child,
        lines,
        tail,
    })
}

fn pump(
    from: impl Read + Send + 'static,
    stream: Stream,
    tx: mpsc::Sender<(Stream, String)>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some(tail) = &tail {
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
            }
            // The receiver may be gone (nobody waits for this child's lines): keep draining.
            let _ = tx.send((stream, line));
        }
    });
}

impl Proc {
    /// The child's pid (the program's own: `ip netns exec` execs in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its stderr.
    pub fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits up to `timeout` for a line from `stream` that `matches`; errs if the child exits
    /// or the time passes first.
    pub fn wait_line(
        &mut self,
        stream: Stream,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} printed no expected line within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.tail()
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok((s, line)) if s == stream && matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.child.try_wait()? {
                        // Its last lines may still be in the pipes: the reader threads send
                        // them and then hang up, so read until they have (bounded).
                        let drained = Instant::now() + Duration::from_secs(5);
                        while let Some(left) = drained.checked_duration_since(Instant::now()) {
                            match self.lines.recv_timeout(left) {
                                Ok((s, line)) if s == stream && matches(&line) => {
                                    return Ok(line);
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        bail!("{} exited ({status}); stderr:\n{}", self.name, self.tail());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait(Duration::from_secs(5))?;
                    bail!("{} exited ({status}); stderr:\n{}", self.name, self.tail());
                }
            }
        }
    }

    /// Closes the child's stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit, then kills it.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                return Err(anyhow!(
                    "{} did not exit within {timeout:?}; killed ({status}); stderr:\n{}",
                    self.name,
                    self.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for a successful exit.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<()> {
        let status = self.wait(timeout)?;
        if !status.success() {
            bail!("{} failed ({status}); stderr:\n{}", self.name, self.tail());
        }
        Ok(())
    }

    /// Sends `signal`, then waits up to `timeout` for the exit (killing it after that).
    pub fn stop(&mut self, signal: Signal, timeout: Duration) -> Result<ExitStatus> {
        if self.running() {
            let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, signal);
        }
        self.wait(timeout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
