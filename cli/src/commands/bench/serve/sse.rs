//! Incremental server-sent-events parsing for the benchmark client: bytes as they arrive in,
//! complete `data` payloads out.
//!
//! Follows the SSE framing rules rather than any one server's spacing: lines end in LF, CRLF or
//! CR; an event is dispatched at a blank line; several `data:` lines join with "\n"; one space
//! after the colon is dropped; comment lines (`:` first, used as keep-alive pings) and other
//! fields are ignored. Bytes are buffered until a line is complete, so a UTF-8 character or a
//! JSON object split across network reads is never seen half-way.
//!
//! Must not know: what the payloads mean (JSON, `[DONE]`).

#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    data: Option<String>,
    /// The previous read ended in CR: a leading LF of the next read belongs to that CRLF.
    skip_lf: bool,
}

impl SseParser {
    /// Feeds bytes; returns the payloads of the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut bytes = bytes;
        if self.skip_lf {
            if let [b'\n', rest @ ..] = bytes {
                bytes = rest;
            }
            self.skip_lf = false;
        }
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'\n' || b == b'\r' {
                self.pending.extend_from_slice(&bytes[start..i]);
                let line = std::mem::take(&mut self.pending);
                self.line(&String::from_utf8_lossy(&line), &mut out);
                if b == b'\r' {
                    if i + 1 < bytes.len() {
                        if bytes[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.skip_lf = true;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        self.pending.extend_from_slice(&bytes[start..]);
        out
    }

    /// The stream ended: an event still missing its blank line (or its last line's end) is
    /// dispatched anyway, as lenient clients do.
    pub fn finish(&mut self) -> Option<String> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.line(&String::from_utf8_lossy(&line), &mut out);
        }
        self.line("", &mut out);
        out.pop()
    }

    fn line(&mut self, line: &str, out: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                out.push(d);
            }
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some(("", _)) => return, // a comment
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_come_out_whole() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert!(p.push(b":1}\n").is_empty());
        assert_eq!(p.push(b"\ndata: [DONE]\n\n"), vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]);
    }

    #[test]
    fn a_multibyte_character_split_between_reads_survives() {
        let text = "data: é\n\n".as_bytes();
        let cut = text.iter().position(|&b| b >= 0x80).unwrap() + 1;
        let mut p = SseParser::default();
        assert!(p.push(&text[..cut]).is_empty());
        assert_eq!(p.push(&text[cut..]), vec!["é".to_string()]);
    }

    #[test]
    fn comments_and_other_fields_are_ignored_and_data_lines_join() {
        let mut p = SseParser::default();
        let got = p.push(b": ping\n\nevent: x\nid: 3\ndata: one\ndata:two\n\n");
        assert_eq!(got, vec!["one\ntwo".to_string()]);
    }

    #[test]
    fn crlf_and_cr_line_ends_work_even_when_split() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: a\r").is_empty());
        assert_eq!(p.push(b"\n\r\ndata: b\r\r"), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn an_unterminated_last_event_is_flushed_at_the_end() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"x\":1}").is_empty());
        assert_eq!(p.finish().as_deref(), Some("{\"x\":1}"));
        assert_eq!(p.finish(), None);
    }
}
