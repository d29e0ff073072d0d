//! Bulk provisioning from CSV or JSON files, streamed in chunks through the bulk endpoints.
//! A chunk the server refuses (bulk creation is all-or-nothing) is retried row by row, so the
//! summary names every failing row and its reason.

use super::{msg, Api, Auth, Fail, Res};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

const CHUNK: usize = 1000;

struct Progress {
    what: String,
    total: Option<usize>,
    done: usize,
    tty: bool,
}

impl Progress {
    fn new(what: &str, total: Option<usize>) -> Progress {
        Progress {
            what: what.into(),
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }
    fn add(&mut self, n: usize) {
        self.done += n;
        let mut e = std::io::stderr();
        match (self.tty, self.total) {
            (true, Some(t)) if t > 0 => {
                let width = 30;
                let filled = (self.done * width / t).min(width);
                let _ = write!(
                    e,
                    "\r{} [{}{}] {}/{}",
                    self.what,
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    self.done,
                    t
                );
            }
            (true, _) => {
                let _ = write!(e, "\r{}: {}", self.what, self.done);
            }
            (false, Some(t)) => {
                let _ = writeln!(e, "{}: {} of {}", self.what, self.done, t);
            }
            (false, None) => {
                let _ = writeln!(e, "{}: {}", self.what, self.done);
            }
        }
    }
    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Minimal CSV field splitting with double-quote support.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur).trim().to_string()),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// (row number, JSON object) or a row's error.
type Rows = Box<dyn Iterator<Item = Result<(usize, Value), String>>>;

/// Rows of a file with their count, streamed for CSV.
fn rows(file: &str) -> Result<(Option<usize>, Rows), Fail> {
    let f = std::fs::File::open(file).map_err(|e| msg(format!("cannot open {file}: {e}")))?;
    if file.ends_with(".json") {
        let v: Value = serde_json::from_reader(std::io::BufReader::new(f))
            .map_err(|e| msg(format!("{file} is not valid JSON: {e}")))?;
        let Value::Array(items) = v else {
            return Err(msg(format!("{file} must hold a JSON array of objects")));
        };
        let n = items.len();
        let it = items.into_iter().enumerate().map(|(i, v)| {
            if v.is_object() {
                Ok((i + 1, v))
            } else {
                Err(format!("row {}: not a JSON object", i + 1))
            }
        });
        return Ok((Some(n), Box::new(it)));
    }
    if !file.ends_with(".csv") {
        return Err(msg("the file must end in .csv or .json"));
    }
    // Count lines first for the progress bar (cheap), then stream.
    let total = std::io::BufReader::new(std::fs::File::open(file).map_err(|e| msg(e.to_string()))?)
        .lines()
        .filter(|l| l.as_ref().is_ok_and(|l| !l.trim().is_empty()))
        .count();
    let mut columns: Vec<String> = DEFAULT_COLUMNS.iter().map(|c| c.to_string()).collect();
    let it = std::io::BufReader::new(f)
        .lines()
        .enumerate()
        .filter_map(move |(i, line)| match line {
            Err(e) => Some(Err(format!("row {}: {e}", i + 1))),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => {
                let fields = csv_fields(&l);
                if i == 0 && fields.first().is_some_and(|f| f.eq_ignore_ascii_case("name")) {
                    columns = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
                    return None;
                }
                Some(
                    csv_row(&columns, fields)
                        .map(|v| (i + 1, v))
                        .map_err(|e| format!("row {}: {e}", i + 1)),
                )
            }
        });
    Ok((Some(total), Box::new(it)))
}

/// The columns of a CSV file without a header row.
const DEFAULT_COLUMNS: &[&str] = &["name", "tags", "metadata"];

/// One CSV row as the API's object: `name`, `description`, `status` and `id` as text, `tags`
/// separated by `;` or `|`, `metadata` as JSON; empty fields are left out.
fn csv_row(columns: &[String], fields: Vec<String>) -> Result<Value, String> {
    let mut o = serde_json::Map::new();
    for (col, v) in columns.iter().zip(fields) {
        if v.is_empty() {
            continue;
        }
        let value = match col.as_str() {
            "name" | "description" | "status" | "id" => Value::String(v),
            "tags" => Value::Array(
                v.split([';', '|'])
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Value::String(t.to_string()))
                    .collect(),
            ),
            "metadata" => serde_json::from_str(&v).map_err(|e| format!("metadata is not valid JSON: {e}"))?,
            other => {
                return Err(format!(
                    "unknown column `{other}` (columns: name, tags, metadata, description, status, id)"
                ))
            }
        };
        o.insert(col.clone(), value);
    }
    Ok(Value::Object(o))
}

fn summary(created: &[Value], failures: &[(usize, String)]) -> Res {
    let out = json!({
        "created": created.len(),
        "failed": failures.len(),
        "failures": failures.iter().map(|(r, why)| json!({"row": r, "reason": why})).collect::<Vec<_>>(),
        "entities": created,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    if failures.is_empty() {
        // The summary is the output; nothing more to print.
        std::process::exit(0);
    }
    Err(msg(format!(
        "{} of {} rows failed",
        failures.len(),
        failures.len() + created.len()
    )))
}

pub async fn entities(api: &Api, kind: &str, file: &str, domain: &str, token: &str) -> Res {
    let (total, it) = rows(file)?;
    let mut progress = Progress::new(&format!("provisioning {kind}"), total);
    let mut created: Vec<Value> = Vec::new();
    let mut failures: Vec<(usize, String)> = Vec::new();
    let mut chunk: Vec<(usize, Value)> = Vec::with_capacity(CHUNK);
    let mut it = it.peekable();
    while it.peek().is_some() {
        chunk.clear();
        while chunk.len() < CHUNK {
            match it.next() {
                Some(Ok(r)) => chunk.push(r),
                Some(Err(e)) => {
                    let row = e
                        .split(':')
                        .next()
                        .and_then(|r| r.trim_start_matches("row ").parse().ok())
                        .unwrap_or(0);
                    failures.push((row, e));
                    progress.add(1);
                }
                None => break,
            }
        }
        if chunk.is_empty() {
            continue;
        }
        let body = Value::Array(chunk.iter().map(|(_, v)| v.clone()).collect());
        match api
            .call(
                reqwest::Method::POST,
                &format!("/{domain}/{kind}/bulk"),
                Auth::Bearer(token),
                Some(body),
            )
            .await
        {
            Ok(Some(v)) => {
                if let Some(items) = v[kind].as_array() {
                    created.extend(items.iter().cloned());
                }
            }
            Ok(None) => {}
            Err(Fail::Msg(_)) => {
                // Find the bad rows one by one; the good ones are created as they go.
                for (row, v) in &chunk {
                    match api
                        .call(
                            reqwest::Method::POST,
                            &format!("/{domain}/{kind}"),
                            Auth::Bearer(token),
                            Some(v.clone()),
                        )
                        .await
                    {
                        Ok(Some(e)) => created.push(e),
                        Ok(None) => {}
                        Err(Fail::Msg(m)) => failures.push((*row, m)),
                        Err(u) => return Err(u),
                    }
                }
            }
            Err(u) => return Err(u),
        }
        progress.add(chunk.len());
    }
    progress.finish();
    summary(&created, &failures)
}

pub async fn connections(api: &Api, file: &str, domain: &str, token: &str) -> Res {
    let f = std::fs::File::open(file).map_err(|e| msg(format!("cannot open {file}: {e}")))?;
    let mut progress = Progress::new("connecting", None);
    let mut done: Vec<Value> = Vec::new();
    let mut failures: Vec<(usize, String)> = Vec::new();
    let mut lines = std::io::BufReader::new(f).lines().enumerate().peekable();
    while lines.peek().is_some() {
        // Group a chunk of (client, channel) pairs by channel: one request per channel.
        let mut by_channel: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
        let mut n = 0;
        while n < CHUNK {
            let Some((i, line)) = lines.next() else { break };
            let line = line.map_err(|e| msg(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let f = csv_fields(&line);
            match f.as_slice() {
                [c, h, ..] if !c.is_empty() && !h.is_empty() => {
                    if i == 0 && c.eq_ignore_ascii_case("client_id") {
                        continue;
                    }
                    by_channel.entry(h.clone()).or_default().push((i + 1, c.clone()));
                    n += 1;
                }
                _ => failures.push((i + 1, "expected client_id,channel_id".into())),
            }
        }
        for (channel, clients) in by_channel {
            let ids: Vec<&str> = clients.iter().map(|(_, c)| c.as_str()).collect();
            let body = json!({"client_ids": ids, "channel_ids": [channel]});
            let ok = api
                .call(
                    reqwest::Method::POST,
                    &format!("/{domain}/channels/connect"),
                    Auth::Bearer(token),
                    Some(body),
                )
                .await
                .is_ok();
            if ok {
                done.extend(
                    clients
                        .iter()
                        .map(|(_, c)| json!({"client_id": c, "channel_id": channel})),
                );
            } else {
                for (row, c) in &clients {
                    let body = json!({"client_ids": [c], "channel_ids": [channel]});
                    match api
                        .call(
                            reqwest::Method::POST,
                            &format!("/{domain}/channels/connect"),
                            Auth::Bearer(token),
                            Some(body),
                        )
                        .await
                    {
                        Ok(_) => done.push(json!({"client_id": c, "channel_id": channel})),
                        Err(Fail::Msg(m)) => failures.push((*row, m)),
                        Err(u) => return Err(u),
                    }
                }
            }
            progress.add(clients.len());
        }
    }
    progress.finish();
    summary(&done, &failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_quotes() {
        assert_eq!(csv_fields("client1,"), vec!["client1", ""]);
        assert_eq!(csv_fields(r#""a, b",c"#), vec!["a, b", "c"]);
        assert_eq!(csv_fields(r#""say ""hi""""#), vec![r#"say "hi""#]);
    }

    #[test]
    fn csv_rows_keep_tags_and_metadata() {
        let cols: Vec<String> = DEFAULT_COLUMNS.iter().map(|c| c.to_string()).collect();
        let row = csv_row(&cols, csv_fields(r#"kitchen,"a; b|c","{""floor"":1}""#)).expect("row");
        assert_eq!(
            row,
            json!({"name": "kitchen", "tags": ["a", "b", "c"], "metadata": {"floor": 1}})
        );
        assert_eq!(
            csv_row(&cols, csv_fields("lone")).expect("row"),
            json!({"name": "lone"})
        );
        let named: Vec<String> = ["name", "description"].iter().map(|c| c.to_string()).collect();
        assert_eq!(
            csv_row(&named, csv_fields("x,the hall")).expect("row"),
            json!({"name": "x", "description": "the hall"})
        );
        assert!(csv_row(&cols, csv_fields("x,,{not json")).is_err());
    }
}
