//! SenML (RFC 8428) JSON packs normalized into records: base fields carry forward, names,
//! times, units, values and sums resolved, every record checked.
//!
//! Times: below 2^28 they are relative to now; larger ones are absolute Unix times whose unit
//! is guessed from the magnitude as Magistrala does (≥1e18 ns, ≥1e15 µs, ≥1e12 ms, else s).
//! Records are returned with times in Unix seconds.

use serde_json::{Map, Value};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub name: String,
    pub unit: String,
    pub time: f64,
    pub update_time: Option<f64>,
    pub value: Option<f64>,
    pub string_value: Option<String>,
    pub bool_value: Option<bool>,
    pub data_value: Option<String>,
    pub sum: Option<f64>,
}

/// Most records one pack may hold.
pub const MAX_RECORDS: usize = 10_000;

const RELATIVE_LIMIT: f64 = 268_435_456.0; // 2^28

/// Converts an absolute time in s, ms, µs or ns to seconds.
pub fn to_seconds(t: f64) -> f64 {
    let a = t.abs();
    if a >= 1e18 {
        t / 1e9
    } else if a >= 1e15 {
        t / 1e6
    } else if a >= 1e12 {
        t / 1e3
    } else {
        t
    }
}

fn resolve_time(t: f64, now: f64) -> f64 {
    if t == 0.0 {
        now
    } else if t.abs() < RELATIVE_LIMIT {
        now + t
    } else {
        to_seconds(t)
    }
}

/// RFC 8428 name rule: letters, digits, `- : . / _`; the first character a letter or digit.
pub fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphanumeric())
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '-' | ':' | '.' | '/' | '_'))
}

fn num(o: &Map<String, Value>, k: &str, i: usize) -> Result<Option<f64>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("record {i}: `{k}` is not a finite number")),
        Some(_) => Err(format!("record {i}: `{k}` must be a number")),
    }
}

fn text<'a>(o: &'a Map<String, Value>, k: &str, i: usize) -> Result<Option<&'a str>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("record {i}: `{k}` must be a string")),
    }
}

/// Length limits of names and strings (configured in `[messages]`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest resolved name (`bn` + `n`), in bytes.
    pub max_name: usize,
    /// Longest unit, string value or data value, in bytes.
    pub max_string: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name: 256,
            max_string: 4096,
        }
    }
}

/// Parses and normalizes a SenML JSON pack. The error names the first bad record (0-based).
/// Resolved times, values and sums must be finite (a base plus an offset can overflow).
pub fn normalize(payload: &[u8], now: f64, limits: Limits) -> Result<Vec<Record>, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Array(items) = v else {
        return Err("a SenML pack is a JSON array of records".into());
    };
    if items.is_empty() {
        return Err("empty SenML pack".into());
    }
    if items.len() > MAX_RECORDS {
        return Err(format!("a pack holds at most {MAX_RECORDS} records"));
    }
    let (mut bn, mut bu) = (String::new(), String::new());
    let (mut bt, mut bv, mut bs) = (0.0f64, 0.0f64, 0.0f64);
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            return Err(format!("record {i}: not a JSON object"));
        };
        if let Some(k) = o.keys().find(|k| k.ends_with('_')) {
            return Err(format!("record {i}: unsupported must-understand field `{k}`"));
        }
        if let Some(n) = text(o, "bn", i)? {
            bn = n.to_string();
        }
        if let Some(u) = text(o, "bu", i)? {
            bu = u.to_string();
        }
        if let Some(t) = num(o, "bt", i)? {
            bt = t;
        }
        if let Some(x) = num(o, "bv", i)? {
            bv = x;
        }
        if let Some(x) = num(o, "bs", i)? {
            bs = x;
        }
        if let Some(ver) = o.get("bver") {
            if !ver.is_u64() {
                return Err(format!("record {i}: `bver` must be a positive integer"));
            }
        }
        let name = format!("{bn}{}", text(o, "n", i)?.unwrap_or(""));
        if name.len() > limits.max_name {
            return Err(format!("record {i}: name longer than {} bytes", limits.max_name));
        }
        if name.is_empty() {
            return Err(format!("record {i}: name is empty (give n or bn)"));
        }
        if !valid_name(&name) {
            return Err(format!("record {i}: invalid name `{name}`"));
        }
        let v = num(o, "v", i)?;
        let vs = text(o, "vs", i)?;
        let vb = match o.get("vb") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(format!("record {i}: `vb` must be a boolean")),
        };
        let vd = text(o, "vd", i)?;
        let s = num(o, "s", i)?;
        let values = [v.is_some(), vs.is_some(), vb.is_some(), vd.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if values > 1 {
            return Err(format!("record {i}: more than one value field"));
        }
        if values == 0 && s.is_none() {
            return Err(format!("record {i}: no value or sum"));
        }
        let unit = text(o, "u", i)?.map(String::from).unwrap_or_else(|| bu.clone());
        for (k, x) in [("u", Some(unit.as_str())), ("vs", vs), ("vd", vd)] {
            if x.is_some_and(|x| x.len() > limits.max_string) {
                return Err(format!("record {i}: `{k}` longer than {} bytes", limits.max_string));
            }
        }
        let time = resolve_time(bt + num(o, "t", i)?.unwrap_or(0.0), now);
        let value = v.map(|x| bv + x);
        let sum = s.map(|x| bs + x);
        for (what, x) in [
            ("time (bt + t)", Some(time)),
            ("value (bv + v)", value),
            ("sum (bs + s)", sum),
        ] {
            if x.is_some_and(|x| !x.is_finite()) {
                return Err(format!("record {i}: {what} is not a finite number"));
            }
        }
        out.push(Record {
            name,
            unit,
            time,
            update_time: num(o, "ut", i)?,
            value,
            string_value: vs.map(String::from),
            bool_value: vb,
            data_value: vd.map(String::from),
            sum,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_700_000_000.5;

    #[test]
    fn the_documents_example() {
        let pack =
            br#"[{"bn":"some-base-name:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
                       {"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3}]"#;
        let r = normalize(pack, NOW, Limits::default()).expect("valid");
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].name.as_str(), r[0].unit.as_str(), r[0].value),
            ("some-base-name:voltage", "V", Some(120.1))
        );
        assert_eq!(r[0].time, 1276020076.001);
        assert_eq!(
            (r[1].name.as_str(), r[1].unit.as_str(), r[1].time),
            ("some-base-name:current", "A", 1276020071.001)
        );
        assert_eq!(r[2].time, 1276020072.001);
    }

    #[test]
    fn base_values_relative_times_sums_and_kinds() {
        let r = normalize(br#"[{"bn":"dev/","bv":10,"bs":100,"n":"a","v":1,"t":-10},{"n":"b","s":5},{"n":"c","vs":"on"},{"n":"d","vb":true},{"n":"e","vd":"AAEC"}]"#, NOW, Limits::default())
            .expect("valid");
        assert_eq!(r[0].value, Some(11.0));
        assert_eq!(r[0].time, NOW - 10.0);
        assert_eq!((r[1].value, r[1].sum, r[1].time), (None, Some(105.0), NOW));
        assert_eq!(r[2].string_value.as_deref(), Some("on"));
        assert_eq!(r[3].bool_value, Some(true));
        assert_eq!(r[4].data_value.as_deref(), Some("AAEC"));
        // Millisecond and nanosecond timestamps become seconds.
        let r = normalize(
            br#"[{"n":"x","v":1,"t":1700000000123},{"n":"x","v":1,"t":1700000000123000000}]"#,
            NOW,
            Limits::default(),
        )
        .expect("valid");
        assert_eq!(r[0].time, 1700000000.123);
        assert!((r[1].time - 1700000000.123).abs() < 1e-6);
    }

    #[test]
    fn refusals_name_the_record() {
        let cases: [(&[u8], &str); 11] = [
            (b"[]", "empty"),
            (b"{}", "array"),
            (
                br#"[{"n":"a","v":1},{"n":"b","v":1,"vs":"x"}]"#,
                "record 1: more than one value",
            ),
            (br#"[{"n":"a"}]"#, "record 0: no value"),
            (br#"[{"n":"-bad","v":1}]"#, "record 0: invalid name"),
            (br#"[{"n":"a b","v":1}]"#, "invalid name"),
            (br#"[{"v":1}]"#, "name is empty"),
            (br#"[{"n":"a","v":"1"}]"#, "`v` must be a number"),
            (
                br#"[{"n":"a","bv":1.7e308,"v":1.7e308}]"#,
                "record 0: value (bv + v) is not a finite",
            ),
            (
                br#"[{"n":"a","v":1},{"n":"b","bs":-1.7e308,"s":-1.7e308}]"#,
                "record 1: sum (bs + s)",
            ),
            (
                br#"[{"n":"a","bt":1.7e308,"t":1.7e308,"v":1}]"#,
                "record 0: time (bt + t)",
            ),
        ];
        for (p, want) in cases {
            let e = normalize(p, NOW, Limits::default()).expect_err("refused");
            assert!(e.contains(want), "{} -> {e}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn names_and_strings_are_bounded() {
        let l = Limits {
            max_name: 8,
            max_string: 4,
        };
        assert!(normalize(br#"[{"bn":"abcd","n":"efgh","v":1}]"#, NOW, l).is_ok());
        let e = normalize(br#"[{"bn":"abcd","n":"efghi","v":1}]"#, NOW, l).expect_err("long name");
        assert!(e.contains("record 0: name longer than 8"), "{e}");
        let e = normalize(br#"[{"n":"a","v":1},{"n":"a","vs":"12345"}]"#, NOW, l).expect_err("long vs");
        assert!(e.contains("record 1: `vs` longer than 4"), "{e}");
        let e = normalize(br#"[{"n":"a","u":"12345","v":1}]"#, NOW, l).expect_err("long unit");
        assert!(e.contains("`u` longer"), "{e}");
    }
}
