//! A small command-line parser: `--flag value`, `--flag=value`, `-x value`, boolean switches and
//! positional arguments. Unknown flags and missing or malformed values are errors that name the
//! flag.

use std::collections::HashMap;
use std::str::FromStr;

/// Parsed arguments of one subcommand.
pub struct Args {
    values: HashMap<&'static str, String>,
    switches: Vec<&'static str>,
    /// Positional arguments, in order.
    pub positional: Vec<String>,
}

/// A flag a subcommand accepts: its long name, an optional short alias, and whether it takes a
/// value.
pub struct Flag {
    pub long: &'static str,
    pub short: Option<&'static str>,
    pub takes_value: bool,
}

pub const fn val(long: &'static str, short: Option<&'static str>) -> Flag {
    Flag {
        long,
        short,
        takes_value: true,
    }
}

pub const fn switch(long: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        takes_value: false,
    }
}

impl Args {
    pub fn parse(raw: &[String], flags: &[Flag]) -> Result<Args, String> {
        let mut a = Args {
            values: HashMap::new(),
            switches: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                a.positional.extend(it.by_ref().cloned());
                break;
            }
            if !arg.starts_with('-') || arg == "-" {
                a.positional.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
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

    pub fn str(&self, long: &str) -> Option<&str> {
        self.values.get(long).map(String::as_str)
    }

    pub fn get<T: FromStr>(&self, long: &str) -> Result<Option<T>, String> {
        match self.values.get(long) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("option --{long}: cannot parse {v:?}")),
        }
    }

    pub fn get_or<T: FromStr>(&self, long: &str, default: T) -> Result<T, String> {
        Ok(self.get(long)?.unwrap_or(default))
    }
}
