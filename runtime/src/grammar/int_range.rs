//! Integer ranges as GBNF: the decimal numbers between two bounds, digit by digit (the usual
//! regular-expression construction: split by length, then by leading digit), so that a JSON
//! Schema `minimum` / `maximum` on an integer is exact.

/// A GBNF expression for the integers in `lo..=hi` (either bound may be open).
pub(super) fn int_range(lo: Option<i64>, hi: Option<i64>) -> String {
    let mut alts = Vec::new();
    // Non-negative part: max(lo, 0) ..= hi.
    if hi.is_none_or(|h| h >= 0) {
        let a = lo.map_or(0, |l| l.max(0)) as u64;
        alts.push(uint_range(a, hi.map(|h| h as u64)));
    }
    // Negative part: lo ..= min(hi, -1), as "-" and a magnitude.
    if lo.is_none_or(|l| l < 0) {
        let top = hi.map_or(-1, |h| h.min(-1));
        let (a, b) = (top.unsigned_abs(), lo.map(i64::unsigned_abs));
        alts.push(format!("\"-\" ({})", uint_range(a, b)));
    }
    alts.join(" | ")
}

/// Decimal numbers without leading zeros in `a..=b` (`b` open when `None`).
fn uint_range(a: u64, b: Option<u64>) -> String {
    let digits = |n: u64| n.to_string().len() as u32;
    let mut alts = Vec::new();
    let top_len = b.map_or(digits(a), digits);
    for len in digits(a)..=top_len {
        let lo = a.max(if len == 1 { 0 } else { 10u64.pow(len - 1) });
        let hi = b.map_or(10u64.pow(len) - 1, |b| b.min(10u64.pow(len) - 1));
        if lo <= hi {
            alts.push(same_len(
                lo.to_string().as_bytes(),
                hi.to_string().as_bytes(),
            ));
        }
    }
    if b.is_none() {
        alts.push(format!("[1-9] [0-9]{{{},}}", digits(a)));
    }
    alts.join(" | ")
}

/// Digit strings of one length from `a` to `b` (`a <= b`).
fn same_len(a: &[u8], b: &[u8]) -> String {
    let d = |c: u8| char::from(c);
    if a == b {
        return format!("\"{}\"", String::from_utf8_lossy(a));
    }
    if a[0] == b[0] {
        return format!("\"{}\" ({})", d(a[0]), same_len(&a[1..], &b[1..]));
    }
    let n = a.len() - 1;
    let (a_low, b_high) = (
        a[1..].iter().all(|&c| c == b'0'),
        b[1..].iter().all(|&c| c == b'9'),
    );
    let mut alts = Vec::new();
    let first = if a_low { a[0] } else { a[0] + 1 };
    let last = if b_high { b[0] } else { b[0] - 1 };
    if !a_low {
        alts.push(format!(
            "\"{}\" ({})",
            d(a[0]),
            same_len(&a[1..], &vec![b'9'; n])
        ));
    }
    if first <= last {
        let tail = if n == 0 {
            String::new()
        } else {
            format!(" [0-9]{{{n}}}")
        };
        alts.push(format!("[{}-{}]{tail}", d(first), d(last)));
    }
    if !b_high {
        alts.push(format!(
            "\"{}\" ({})",
            d(b[0]),
            same_len(&vec![b'0'; n], &b[1..])
        ));
    }
    alts.join(" | ")
}
