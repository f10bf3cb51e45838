//! A tiny command-line parser for the benchmark tools: `--key value` options and `--flag`
//! switches, nothing positional. Unknown or malformed options are errors, so a typo in the
//! orchestrator never silently changes a measurement.

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
};

use anyhow::{Context as _, Result, bail};

/// Parsed `--key value` options and `--flag`s.
#[derive(Debug, Default)]
pub struct Args {
    options: BTreeMap<String, String>,
    /// Every value of each option, in order (for options that may repeat).
    repeated: BTreeMap<String, Vec<String>>,
    flags: BTreeSet<String>,
    used: BTreeSet<String>,
}

impl Args {
    /// Parses `args` (without the program name). A `--name` followed by another `--…` or by
    /// nothing is a flag; otherwise it takes the next word as its value.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args> {
        let mut parsed = Args::default();
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                bail!("unexpected argument `{arg}` (options are `--name value` or `--flag`)");
            };
            match args.peek() {
                Some(next) if !next.starts_with("--") => {
                    let value = args.next().unwrap_or_default();
                    parsed
                        .repeated
                        .entry(name.to_owned())
                        .or_default()
                        .push(value.clone());
                    parsed.options.insert(name.to_owned(), value);
                }
                _ => {
                    parsed.flags.insert(name.to_owned());
                }
            }
        }
        Ok(parsed)
    }

    /// The process's own arguments.
    pub fn from_env() -> Result<Args> {
        Args::parse(std::env::args().skip(1))
    }

    /// Option `name` parsed as `T`, if given.
    pub fn opt<T>(&mut self, name: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.used.insert(name.to_owned());
        self.options
            .get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| anyhow::anyhow!("--{name} {v}: {e}"))
            })
            .transpose()
    }

    /// Option `name` parsed as `T`, or `default`.
    pub fn get<T>(&mut self, name: &str, default: T) -> Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    /// Option `name`, which must be given.
    pub fn need<T>(&mut self, name: &str) -> Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.opt(name)?
            .with_context(|| format!("missing required option --{name}"))
    }

    /// Every value given for a repeatable option `name`, in order (none: empty).
    pub fn all(&mut self, name: &str) -> Vec<String> {
        self.used.insert(name.to_owned());
        self.repeated.get(name).cloned().unwrap_or_default()
    }

    /// Whether `--name` was given as a flag.
    pub fn flag(&mut self, name: &str) -> bool {
        self.used.insert(name.to_owned());
        self.flags.contains(name)
    }

    /// Errs if an option or flag was given that nothing asked for.
    pub fn finish(&self) -> Result<()> {
        let unknown: Vec<&String> = self
            .options
            .keys()
            .chain(self.flags.iter())
            .filter(|name| !self.used.contains(*name))
            .collect();
        if !unknown.is_empty() {
            bail!("unknown option(s): {unknown:?}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::parse(words.iter().map(ToString::to_string)).expect("parse")
    }

    #[test]
    fn options_flags_and_unknowns() {
        let mut a = args(&["--conns", "8", "--smoke", "--frame", "1024"]);
        assert_eq!(a.need::<usize>("conns").unwrap(), 8);
        assert!(a.flag("smoke"));
        assert!(!a.flag("direct"));
        assert!(a.finish().is_err(), "--frame was not asked for");
        assert_eq!(a.get::<usize>("frame", 1).unwrap(), 1024);
        assert_eq!(a.get::<usize>("other", 7).unwrap(), 7);
        a.finish().unwrap();
        assert!(args(&["--conns", "x"]).need::<usize>("conns").is_err());
        assert!(Args::parse(["stray".to_owned()]).is_err());
    }

    #[test]
    fn repeated_options_keep_every_value() {
        let mut a = args(&["--peer", "a=1", "--smoke", "--peer", "b=2"]);
        assert_eq!(a.all("peer"), ["a=1", "b=2"]);
        assert!(a.all("other").is_empty());
        assert!(a.flag("smoke"));
        a.finish().unwrap();
    }
}
