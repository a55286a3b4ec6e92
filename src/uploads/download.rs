//! `GET /v1/files/{id}`: serving a stored file within the download memory budget.

use super::*;

/// Bytes of a download body held in memory; returned to the budget when dropped.
#[derive(Debug)]
struct DownloadPermit {
    bytes: u64,
    budget: Arc<AtomicU64>,
}

impl Drop for DownloadPermit {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes, Relaxed);
    }
}

/// `GET /v1/files/{id}` on a reader thread.
/// Is `file_id` an id this server makes (`f_` + 24 hex digits)? Only such ids ever name a
/// file on disk, so anything else is 404 before any lookup.
pub fn well_formed_id(file_id: &str) -> bool {
    file_id.len() == 26
        && file_id.starts_with("f_")
        && file_id[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Serve a file whose row the reader found readable (on the reader thread), within the
/// download memory budget.
pub fn serve(ctx: &ServerCtx, file: FileRow) -> Response {
    let FileRow {
        file_id,
        file_name: name,
        mime_type: mime,
        size,
        sha256: sha,
    } = file;
    if !well_formed_id(&file_id) {
        return Response::error(404, ErrorCode::NotFound, "no such file");
    }
    let budget = &ctx.uploads.download_bytes;
    let before = budget.fetch_add(size, Relaxed);
    let permit = DownloadPermit {
        bytes: size,
        budget: budget.clone(),
    };
    if before > 0 && before + size > ctx.cfg.uploads.download_memory_bytes {
        return Response::error(503, ErrorCode::Busy, "too many downloads in progress")
            .with_header("Retry-After", "1");
    }
    let body = match std::fs::read(ctx.uploads.dir.join(&file_id)) {
        Ok(b) if b.len() as u64 == size => b,
        Ok(b) => {
            log::error!("file {file_id}: {} bytes on disk, {size} recorded", b.len());
            return Response::error(500, ErrorCode::Internal, "the stored file is damaged");
        }
        Err(e) => {
            log::error!("file {file_id}: {e}");
            return Response::error(500, ErrorCode::Internal, "the stored file is missing");
        }
    };
    let mut r = Response::text(200, mime, body)
        .with_header("Content-Disposition", content_disposition(&name))
        .with_header("ETag", format!("\"{sha}\""))
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Content-Security-Policy", "sandbox");
    r.hold = Some(Arc::new(permit));
    ctx.metrics.downloads.fetch_add(1, Relaxed);
    ctx.metrics.download_bytes.fetch_add(size, Relaxed);
    r
}

/// `attachment` with an ASCII fallback name and the exact name in RFC 5987 form. The name
/// is reduced again (`safe_file_name`): rows written before names were reduced at upload
/// may still hold a path.
fn content_disposition(name: &str) -> String {
    let name = safe_file_name(name).unwrap_or_else(|| "file".to_string());
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut exact = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            exact.push(b as char);
        } else {
            exact.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{exact}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_in_a_stored_name_never_reaches_the_header() {
        assert!(content_disposition("../../x.txt").starts_with("attachment; filename=\"x.txt\""));
    }

    #[test]
    fn content_disposition_is_header_safe() {
        let h = content_disposition("ré\"sumé;.pdf");
        assert!(h.is_ascii());
        assert!(
            h.starts_with("attachment; filename=\"r__sum_;.pdf\""),
            "{h}"
        );
        assert!(h.ends_with("r%C3%A9%22sum%C3%A9%3B.pdf"), "{h}");
    }
}
