//! JSON Schema `pattern`: a regular expression of the simple kind (literals, classes, `.`,
//! groups, `|`, quantifiers, `\d`, `\w`) translated into a GBNF expression for the text
//! inside a JSON string. Characters JSON would escape are refused, as are lookarounds,
//! backreferences, negated classes and anchors other than at the ends.

use super::schema::lit;

/// Translates a regular expression of the simple kind into a GBNF expression for the text
/// inside a JSON string (characters that JSON would escape are refused).
pub(super) fn pattern(re: &str) -> Result<String, String> {
    let re = re.strip_prefix('^').unwrap_or(re);
    let re = re.strip_suffix('$').unwrap_or(re);
    let mut out = String::new();
    let mut chars = re.chars().peekable();
    let plain = |c: char| -> Result<(), String> {
        if c == '"' || c == '\\' || (c as u32) < 0x20 {
            Err(format!(
                "the character {c:?} needs escaping in JSON; not supported"
            ))
        } else {
            Ok(())
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '.' => out.push_str(" [^\"\\\\\\x7F\\x00-\\x1F]"),
            '(' => {
                if chars.peek() == Some(&'?') {
                    chars.next();
                    if chars.next() != Some(':') {
                        return Err("only non-capturing `(?:` groups are supported".into());
                    }
                }
                out.push_str(" (");
            }
            ')' | '|' | '*' | '+' | '?' => {
                out.push(' ');
                out.push(c);
            }
            '{' => {
                out.push('{');
                for c in chars.by_ref() {
                    if !(c.is_ascii_digit() || c == ',' || c == '}') {
                        return Err(format!("unexpected {c:?} in a repetition"));
                    }
                    out.push(c);
                    if c == '}' {
                        break;
                    }
                }
            }
            '[' => {
                out.push_str(" [");
                if chars.peek() == Some(&'^') {
                    return Err("negated classes `[^...]` are not supported in patterns".into());
                }
                loop {
                    match chars.next() {
                        None => return Err("unterminated class".into()),
                        Some(']') => break,
                        Some('\\') => out.push_str(&class_escape(chars.next())?),
                        Some(c) => {
                            plain(c)?;
                            out.push(c);
                        }
                    }
                }
                out.push(']');
            }
            '\\' => {
                let e = chars.next();
                match e {
                    Some('d' | 'w') => out.push_str(&format!(" [{}]", class_escape(e)?)),
                    Some(c) if "^$.|?*+()[]{}/-".contains(c) => {
                        out.push_str(&format!(" {}", lit(&c.to_string())))
                    }
                    _ => return Err(format!("escape \\{} is not supported", e.unwrap_or(' '))),
                }
            }
            '^' | '$' => return Err("anchors are supported only at the ends".into()),
            c => {
                plain(c)?;
                out.push(' ');
                out.push_str(&lit(&c.to_string()));
            }
        }
    }
    Ok(out.trim().to_string())
}

/// The inside of a GBNF class for a regex class escape.
fn class_escape(e: Option<char>) -> Result<String, String> {
    match e {
        Some('d') => Ok("0-9".into()),
        Some('w') => Ok("a-zA-Z0-9_".into()),
        Some(c @ ('[' | ']' | '^' | '-')) => Ok(format!("\\{c}")),
        Some(c) if "$.|?*+(){}/".contains(c) => Ok(c.to_string()),
        Some(c) => Err(format!("escape \\{c} is not supported in a class")),
        None => Err("unterminated escape".into()),
    }
}
