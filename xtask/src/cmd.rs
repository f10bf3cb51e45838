//! A thin wrapper around [`Command`] that remembers its command line, so that a failure can say
//! exactly what was run and what it printed.

use std::{
    ffi::OsStr,
    fmt,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context as _, Result, anyhow};

/// A command to run, together with its command line as a user would type it.
pub struct Cmd {
    command: Command,
    /// Environment assignments, program and arguments, shell-quoted.
    line: Vec<String>,
}

impl Cmd {
    /// A command running `program`, found on `PATH` unless it is a path.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        Self {
            command: Command::new(program),
            line: vec![quote(program)],
        }
    }

    /// A command running the cargo that runs this xtask (`$CARGO`), shown as `cargo`.
    pub fn cargo() -> Self {
        let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Self {
            command: Command::new(program),
            line: vec!["cargo".to_owned()],
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.line.push(quote(arg.as_ref()));
        self.command.arg(arg);
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        args.into_iter().fold(self, Self::arg)
    }

    /// Sets an environment variable for the command; it is shown before the program.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let position = self.line.len() - self.program_and_args();
        self.line
            .insert(position, format!("{key}={}", quote(value.as_ref())));
        self.command.env(key, value);
        self
    }

    /// Runs the command in `dir` (not shown in the command line).
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Runs the command with its output captured, whatever its exit status; errs only if it
    /// could not be started.
    pub fn output(mut self) -> Result<Output> {
        self.command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{self}`"))
    }

    /// Runs the command with its output captured and returns its stdout; errs, showing the
    /// command line, its exit status and everything it printed, unless it exits 0.
    pub fn run(self) -> Result<String> {
        let line = self.to_string();
        let output = self.output()?;
        if !output.status.success() {
            return Err(failure(&line, &output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs the command with its output captured and returns its stdout if it exits 0; `None`
    /// if it could not be started or failed. For checks, where failure means "missing".
    pub fn probe(self) -> Option<String> {
        let output = self.output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs the command attached to this terminal and returns its exit status.
    pub fn status(mut self) -> Result<ExitStatus> {
        self.command
            .status()
            .with_context(|| format!("could not start `{self}`"))
    }

    /// Runs the command attached to this terminal; errs, showing the command line, unless it
    /// exits 0.
    pub fn run_attached(self) -> Result<()> {
        let line = self.to_string();
        let status = self.status()?;
        if !status.success() {
            return Err(anyhow!("`{line}` failed ({})", describe(status)));
        }
        Ok(())
    }

    /// Spawns the command attached to this terminal, for a caller that needs its pid.
    pub fn spawn(mut self) -> Result<std::process::Child> {
        self.command
            .spawn()
            .with_context(|| format!("could not start `{self}`"))
    }

    /// Spawns the command with stdout piped and stderr attached to this terminal.
    pub fn spawn_piped(mut self) -> Result<std::process::Child> {
        self.command
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{self}`"))
    }

    /// Replaces this process with the command, which inherits its exit code and signals.
    /// Returns only if that fails.
    pub fn exec(mut self) -> anyhow::Error {
        let error = self.command.exec();
        anyhow!("could not start `{self}`: {error}")
    }

    /// How many entries at the end of `line` are the program and its arguments.
    fn program_and_args(&self) -> usize {
        1 + self.command.get_args().len()
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line.join(" "))
    }
}

/// The error for a captured command that failed: its command line, exit status and output.
fn failure(line: &str, output: &Output) -> anyhow::Error {
    let mut message = format!("`{line}` failed ({})", describe(output.status));
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        if !text.is_empty() {
            message.push_str(&format!("\n--- {name} ---\n{text}"));
        }
    }
    anyhow!(message)
}

/// "exit code N" or "killed by signal N".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Quotes `word` for a POSIX shell when it holds anything but plain characters.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@+,%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shows_env_then_program_then_quoted_args() {
        let cmd = Cmd::new("cargo")
            .args(["install", "bpf-linker@0.13.0"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .arg("${Status}");
        assert_eq!(
            cmd.to_string(),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 '${Status}'"
        );
    }

    #[test]
    fn failure_shows_command_status_and_output() {
        let err = Cmd::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`sh -c 'echo out; echo err >&2; exit 3'` failed (exit code 3)"));
        assert!(err.contains("--- stdout ---\nout"));
        assert!(err.contains("--- stderr ---\nerr"));
    }

    #[test]
    fn probe_is_none_for_a_missing_program() {
        assert!(Cmd::new("/nonexistent/xtask-probe").probe().is_none());
        assert_eq!(Cmd::new("echo").arg("hi").probe().as_deref(), Some("hi\n"));
    }
}
