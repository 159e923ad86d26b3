//! A small command-line parser: `--flag value`, `--flag=value`, `-x value`, boolean switches and
//! positional arguments. Unknown flags and missing or malformed values are errors that name the
//! flag.
//!
//! Arguments arrive as OS strings (`std::env::args_os`): a path flag (`Flag::path`) keeps its
//! value as raw bytes, so a model or output path that is not UTF-8 just works; every other value
//! and every positional argument must be UTF-8 and is otherwise a usage error naming the flag.
//! (`std::env::args` would panic on such an argument.)

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::str::FromStr;

/// Parsed arguments of one subcommand.
pub struct Args {
    values: HashMap<&'static str, OsString>,
    /// Every value of every flag, in order (a repeated flag such as `--stop` accumulates).
    all: Vec<(&'static str, OsString)>,
    switches: Vec<&'static str>,
    /// Positional arguments, in order (always UTF-8).
    pub positional: Vec<String>,
}

/// A flag a subcommand accepts: its long name, an optional short alias, whether it takes a
/// value, and whether that value is a file path (kept as bytes, may be non-UTF-8).
pub struct Flag {
    pub long: &'static str,
    pub short: Option<&'static str>,
    pub takes_value: bool,
    pub path: bool,
}

pub const fn val(long: &'static str, short: Option<&'static str>) -> Flag {
    Flag {
        long,
        short,
        takes_value: true,
        path: false,
    }
}

/// A flag whose value is a file path.
pub const fn path(long: &'static str, short: Option<&'static str>) -> Flag {
    Flag {
        long,
        short,
        takes_value: true,
        path: true,
    }
}

pub const fn switch(long: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        takes_value: false,
        path: false,
    }
}

/// `arg` as UTF-8, or a usage error saying where the bad bytes were.
fn utf8<'a>(arg: &'a OsStr, what: &str) -> Result<&'a str, String> {
    arg.to_str().ok_or_else(|| {
        format!(
            "{what} is not valid UTF-8: {:?} (only file paths may hold other bytes)",
            arg.to_string_lossy()
        )
    })
}

impl Args {
    pub fn parse(raw: &[OsString], flags: &[Flag]) -> Result<Args, String> {
        let mut a = Args {
            values: HashMap::new(),
            all: Vec::new(),
            switches: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(arg) = it.next() {
            let bytes = arg.as_encoded_bytes();
            if bytes == b"--" {
                for p in it.by_ref() {
                    a.positional
                        .push(utf8(p, "a positional argument")?.to_string());
                }
                break;
            }
            if !bytes.starts_with(b"-") || bytes == b"-" {
                a.positional
                    .push(utf8(arg, "a positional argument")?.to_string());
                continue;
            }
            // `--name=value`: split at the first '=' on the bytes, so a non-UTF-8 value after
            // it is still seen (the name itself must be UTF-8 to match a flag).
            let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
                Some(i) if bytes.starts_with(b"--") => {
                    let (n, v) = bytes.split_at(i);
                    // SAFETY: both halves are split at an ASCII '=' of bytes that came from an
                    // `OsStr`, which `from_encoded_bytes_unchecked` allows (it splits only at
                    // a valid UTF-8 boundary of the encoding: '=' is ASCII).
                    let (n, v) = unsafe {
                        (
                            OsStr::from_encoded_bytes_unchecked(n),
                            OsStr::from_encoded_bytes_unchecked(&v[1..]),
                        )
                    };
                    (n, Some(v.to_os_string()))
                }
                _ => (arg.as_os_str(), None),
            };
            let name = utf8(name, "an option name")?;
            let flag = flags
                .iter()
                .find(|f| name.strip_prefix("--") == Some(f.long) || f.short == Some(name))
                .ok_or_else(|| format!("unknown option {name} (see --help)"))?;
            if flag.takes_value {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("option --{} needs a value", flag.long))?,
                };
                if !flag.path {
                    utf8(&v, &format!("the value of --{}", flag.long))?;
                }
                a.all.push((flag.long, v.clone()));
                a.values.insert(flag.long, v);
            } else {
                if inline.is_some() {
                    return Err(format!("option --{} takes no value", flag.long));
                }
                a.switches.push(flag.long);
            }
        }
        Ok(a)
    }

    pub fn has(&self, long: &str) -> bool {
        self.switches.contains(&long)
    }

    /// The value of a non-path flag (checked to be UTF-8 by `parse`).
    pub fn str(&self, long: &str) -> Option<&str> {
        self.values.get(long).and_then(|v| v.to_str())
    }

    /// Every value given to a repeatable non-path flag, in order (`--stop A --stop B`).
    pub fn strs(&self, long: &str) -> Vec<&str> {
        self.all
            .iter()
            .filter(|(name, _)| *name == long)
            .filter_map(|(_, v)| v.to_str())
            .collect()
    }

    /// The value of a path flag, as given (any bytes).
    pub fn path(&self, long: &str) -> Option<PathBuf> {
        self.values.get(long).map(PathBuf::from)
    }

    /// The value of `--long`, parsed; the error names the flag, the value and why.
    pub fn get<T: FromStr>(&self, long: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.str(long) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| format!("option --{long}: cannot parse {v:?}: {e}")),
        }
    }

    pub fn get_or<T: FromStr>(&self, long: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.get(long)?.unwrap_or(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn os(v: &[&[u8]]) -> Vec<OsString> {
        v.iter().map(|b| OsString::from_vec(b.to_vec())).collect()
    }

    const FLAGS: &[Flag] = &[path("model", Some("-m")), val("stop", None)];

    #[test]
    fn non_utf8_paths_pass_and_other_values_are_usage_errors() {
        let a = Args::parse(&os(&[b"-m", b"/tmp/\xff.gguf"]), FLAGS).unwrap();
        assert_eq!(
            a.path("model").unwrap().into_os_string().into_vec(),
            b"/tmp/\xff.gguf"
        );
        let a = Args::parse(&os(&[b"--model=/tmp/\xfe"]), FLAGS).unwrap();
        assert_eq!(
            a.path("model").unwrap().into_os_string().into_vec(),
            b"/tmp/\xfe"
        );
        let e = Args::parse(&os(&[b"--stop", b"\xff"]), FLAGS)
            .err()
            .unwrap();
        assert!(e.contains("--stop is not valid UTF-8"), "{e}");
        let e = Args::parse(&os(&[b"--stop=\xff"]), FLAGS).err().unwrap();
        assert!(e.contains("--stop is not valid UTF-8"), "{e}");
        let e = Args::parse(&os(&[b"\xffpositional"]), FLAGS).err().unwrap();
        assert!(e.contains("positional argument is not valid UTF-8"), "{e}");
        let e = Args::parse(&os(&[b"--\xff"]), FLAGS).err().unwrap();
        assert!(e.contains("option name is not valid UTF-8"), "{e}");
    }

    #[test]
    fn repeated_values_accumulate_and_the_last_is_the_value() {
        let a = Args::parse(&os(&[b"--stop", b"A", b"--stop=B", b"--stop", b"C"]), FLAGS).unwrap();
        assert_eq!(a.strs("stop"), ["A", "B", "C"]);
        assert_eq!(a.str("stop"), Some("C"));
        assert!(a.strs("model").is_empty());
    }
}
