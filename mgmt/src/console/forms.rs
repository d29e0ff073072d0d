//! What console forms send: the parsed form, the error shown next to it (with what was
//! typed), and the fields' own formats (tags, metadata, a bulk CSV row).

use super::Request;
use crate::error::ApiError;
use serde_json::{json, Value};

/// A submitted form (`application/x-www-form-urlencoded`).
pub struct Form(pub(super) Vec<(String, String)>);

impl Form {
    pub(super) fn parse(req: &Request) -> Result<Form, ApiError> {
        let ct = req
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ct != "application/x-www-form-urlencoded" {
            return Err(ApiError::UnsupportedMediaType(
                "console forms are application/x-www-form-urlencoded".into(),
            ));
        }
        let text = std::str::from_utf8(&req.body).map_err(|_| ApiError::bad("form is not UTF-8"))?;
        Ok(Form(crate::http::parse_query(text)))
    }
    pub fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
            .trim()
    }
    pub(super) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
}

/// An error shown next to the form that caused it, with what the user typed there (shown
/// again, so nothing is lost) and the field the error is about (marked).
pub struct Notice {
    pub form: String,
    pub message: String,
    /// The form's fields as submitted (never the CSRF token or a secret).
    pub values: Vec<(String, String)>,
}

/// The fields a message is about: the first field name it mentions.
const FIELDS: &[&str] = &["metadata", "tags", "description", "name"];

impl Notice {
    pub(super) fn new(form: &Form, action: &str, e: &ApiError) -> Notice {
        Notice {
            form: action.to_string(),
            message: e.to_string(),
            values: form
                .0
                .iter()
                .filter(|(k, _)| k != "csrf" && k != "secret" && !k.contains("password"))
                .cloned()
                .collect(),
        }
    }

    /// What was typed into `field` of `form`, when this notice is about that form.
    pub fn typed(&self, form: &str, field: &str) -> Option<&str> {
        (self.form == form)
            .then(|| self.values.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str()))
            .flatten()
    }

    /// The field of `form` the error is about, if it names one.
    pub fn field(&self, form: &str) -> Option<&'static str> {
        let m = self.message.to_ascii_lowercase();
        (self.form == form)
            .then(|| FIELDS.iter().copied().find(|f| m.contains(f)))
            .flatten()
    }
}

/// Splits a tags field (commas or semicolons) into tags.
pub fn tags(s: &str) -> Vec<String> {
    s.split([',', ';'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

/// A metadata field: empty means `{}`; otherwise a JSON object.
pub fn metadata(s: &str) -> Result<Value, ApiError> {
    if s.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(s) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::bad(
            "metadata must be a JSON object, e.g. {\"room\": \"kitchen\"}",
        )),
        Err(e) => Err(ApiError::bad(format!("metadata is not valid JSON: {e}"))),
    }
}

/// Parses one line of a bulk CSV: `name[,tags[,secret]]` (tags separated by `;`). Quotes
/// around a cell are removed; a cell may not contain a comma.
pub fn csv_row(line: &str) -> (String, Vec<String>, String) {
    let cells: Vec<String> = line
        .split(',')
        .map(|c| c.trim().trim_matches('"').trim().to_string())
        .collect();
    let cell = |i: usize| cells.get(i).cloned().unwrap_or_default();
    (cell(0), tags(&cell(1)), cell(2))
}
