//! What may be uploaded: names, media types, sizes, extensions.

use super::*;

/// Characters that reorder or hide text (bidi controls and marks): a name like
/// `invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The name a file is stored and shown under: the last path component of what the client
/// sent, without control or bidi characters, trimmed. `None` when nothing usable is left
/// (empty, `.`, `..`, a bare path) or it is longer than 255 bytes.
pub fn safe_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let clean = clean.trim();
    if clean.is_empty() || clean == "." || clean == ".." || clean.len() > 255 {
        return None;
    }
    Some(clean.to_string())
}

/// Name, type and size rules, checked before any byte is accepted. `Ok`: the safe name
/// (`safe_file_name`) to store.
pub fn check_file(
    cfg: &UploadsConfig,
    name: &str,
    mime: &str,
    size: u64,
) -> Result<String, (ErrorCode, String)> {
    let Some(name) = safe_file_name(name) else {
        return Err((
            ErrorCode::BadRequest,
            "file_name must name a file (not a path, `.` or `..`) in 1 to 255 bytes".into(),
        ));
    };
    if size > cfg.max_file_bytes {
        return Err((
            ErrorCode::UploadTooLarge,
            format!("files are limited to {} bytes", cfg.max_file_bytes),
        ));
    }
    if !valid_mime(mime) {
        return Err((
            ErrorCode::UploadType,
            format!("mime_type {mime:?} is not a media type like text/plain"),
        ));
    }
    if cfg.allowed_extensions.iter().any(|e| e == "*") {
        return Ok(name);
    }
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if ext.is_empty() || !cfg.allowed_extensions.contains(&ext) {
        return Err((
            ErrorCode::UploadType,
            format!(
                "file type {:?} is not accepted (accepted: {})",
                ext,
                cfg.allowed_extensions.join(", ")
            ),
        ));
    }
    Ok(name)
}

/// `type/subtype` of RFC 6838 characters: safe to send back as a Content-Type.
fn valid_mime(m: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match m.split_once('/') {
        Some((t, s)) => ok(t) && ok(s),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> UploadsConfig {
        crate::Config::defaults().uploads
    }

    #[test]
    fn file_rules() {
        let c = cfg();
        assert!(check_file(&c, "a.pdf", "application/pdf", 10).is_ok());
        assert!(check_file(&c, "A.PDF", "application/pdf", 10).is_ok());
        assert_eq!(
            check_file(&c, "a.exe", "application/octet-stream", 10)
                .unwrap_err()
                .0,
            ErrorCode::UploadType
        );
        assert_eq!(
            check_file(&c, "noext", "text/plain", 10).unwrap_err().0,
            ErrorCode::UploadType
        );
        assert_eq!(
            check_file(&c, "a.txt", "text/plain\r\nX: y", 10)
                .unwrap_err()
                .0,
            ErrorCode::UploadType
        );
        assert_eq!(
            check_file(&c, "a.txt", "text/plain", c.max_file_bytes + 1)
                .unwrap_err()
                .0,
            ErrorCode::UploadTooLarge
        );
        // Control characters are dropped, not kept in a header or a listing.
        assert_eq!(check_file(&c, "a\n.txt", "text/plain", 1).unwrap(), "a.txt");
    }

    #[test]
    fn names_are_reduced_to_a_safe_base_name() {
        assert_eq!(safe_file_name("../../x.txt").as_deref(), Some("x.txt"));
        assert_eq!(
            safe_file_name("C:\\Users\\eve\\a.pdf").as_deref(),
            Some("a.pdf")
        );
        assert_eq!(
            safe_file_name(" report.pdf ").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(
            safe_file_name("invoice\u{202E}fdp.exe").as_deref(),
            Some("invoicefdp.exe")
        );
        for bad in ["", ".", "..", "../", "a/..", "/", "\u{202E}", "\n"] {
            assert_eq!(safe_file_name(bad), None, "{bad:?}");
        }
        assert_eq!(safe_file_name(&"a".repeat(256)), None);
        let c = cfg();
        assert_eq!(
            check_file(&c, "../../x.txt", "text/plain", 1).unwrap(),
            "x.txt"
        );
        assert_eq!(
            check_file(&c, "..", "text/plain", 1).unwrap_err().0,
            ErrorCode::BadRequest
        );
    }
}
