//! Typed access to a GGUF file's metadata: getters that check each value's type (a wrong type
//! is an error naming the key and showing the value, never a silent default), and the short
//! rendering `ember info` prints.

use super::{Cursor, GgufFile, Value, ValueType};
use crate::error::{Error, Result};

impl GgufFile {
    fn bad(key: &str, what: impl Into<String>) -> Error {
        Error::BadKey {
            key: key.into(),
            what: what.into(),
        }
    }

    /// A string value; `Ok(None)` when absent, an error when of another type or not UTF-8.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(r)) => std::str::from_utf8(&self.bytes()[r.clone()])
                .map(Some)
                .map_err(|_| Self::bad(key, "string is not valid UTF-8")),
            Some(v) => Err(Self::bad(
                key,
                format!("expected a string, found {}", v.type_name()),
            )),
        }
    }

    /// An unsigned integer value (any integer type with a non-negative value).
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Self::bad(
                    key,
                    format!(
                        "expected a non-negative integer, found the {} {}",
                        v.type_name(),
                        self.short_value(v)
                    ),
                )
            }),
        }
    }

    /// A float value (float or integer types).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|f| Some(f as f32)).ok_or_else(|| {
                Self::bad(
                    key,
                    format!(
                        "expected a number, found the {} {}",
                        v.type_name(),
                        self.short_value(v)
                    ),
                )
            }),
        }
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::bad(
                key,
                format!("expected a bool, found {}", v.type_name()),
            )),
        }
    }

    fn get_array(&self, key: &str, want: ValueType) -> Result<Option<(u64, &[u8])>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array { elem, len, bytes }) if *elem == want => {
                Ok(Some((*len, &self.bytes()[bytes.clone()])))
            }
            Some(Value::Array { elem, .. }) => Err(Self::bad(
                key,
                format!("expected an array of {want:?}, found an array of {elem:?}"),
            )),
            Some(v) => Err(Self::bad(
                key,
                format!("expected an array, found {}", v.type_name()),
            )),
        }
    }

    /// An array of strings, decoded (UTF-8 checked).
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some((len, raw)) = self.get_array(key, ValueType::String)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(len as usize);
        let mut c = Cursor { buf: raw, pos: 0 };
        for i in 0..len {
            let r = c.str_range(key)?;
            let s = std::str::from_utf8(&raw[r])
                .map_err(|_| Self::bad(key, format!("element {i} is not valid UTF-8")))?;
            out.push(s);
        }
        Ok(Some(out))
    }

    /// An array of i32 (also accepts u32 / i8..i64 element types whose values fit).
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        match self.get(key) {
            Some(Value::Array { elem, .. }) if *elem == ValueType::I32 => {}
            Some(Value::Array { elem, .. }) if *elem == ValueType::U32 => {
                let (_, raw) = self.get_array(key, ValueType::U32)?.unwrap_or((0, &[]));
                return raw
                    .chunks_exact(4)
                    .map(|b| {
                        i32::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .map_err(|_| Self::bad(key, "value does not fit in i32"))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some);
            }
            _ => {}
        }
        Ok(self.get_array(key, ValueType::I32)?.map(|(_, raw)| {
            raw.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }))
    }

    /// An array of f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        Ok(self.get_array(key, ValueType::F32)?.map(|(_, raw)| {
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }))
    }

    /// Number of elements of an array value.
    pub fn array_len(&self, key: &str) -> Option<u64> {
        match self.get(key) {
            Some(Value::Array { len, .. }) => Some(*len),
            _ => None,
        }
    }

    /// [`GgufFile::display_value`] cut to 64 characters, for error messages.
    fn short_value(&self, v: &Value) -> String {
        let d = self.display_value(v);
        match d.char_indices().nth(64) {
            Some((i, _)) => format!("{}...", &d[..i]),
            None => d,
        }
    }

    /// A short human rendering of a value for `ember info` (arrays abbreviated).
    pub fn display_value(&self, v: &Value) -> String {
        match v {
            Value::Str(r) => {
                let s = String::from_utf8_lossy(&self.bytes()[r.clone()]);
                if s.chars().count() > 60 {
                    let head: String = s.chars().take(57).collect();
                    format!("{head:?}...")
                } else {
                    format!("{s:?}")
                }
            }
            Value::Array { elem, len, .. } => format!("[{elem:?}; {len}]"),
            Value::U8(x) => x.to_string(),
            Value::I8(x) => x.to_string(),
            Value::U16(x) => x.to_string(),
            Value::I16(x) => x.to_string(),
            Value::U32(x) => x.to_string(),
            Value::I32(x) => x.to_string(),
            Value::F32(x) => x.to_string(),
            Value::Bool(x) => x.to_string(),
            Value::U64(x) => x.to_string(),
            Value::I64(x) => x.to_string(),
            Value::F64(x) => x.to_string(),
        }
    }
}
