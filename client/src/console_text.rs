//! Output for a Windows console, which takes only UTF-8 text: the standard
//! library refuses other bytes there, so a job's Latin-1 message or a
//! character split between two chunks would otherwise end the relay.
//! Complete characters pass; a character cut at the end of a chunk waits
//! for the next; invalid bytes become U+FFFD, as a terminal shows them.
//! Pipes and files get the job's bytes untouched and never come here.

/// The conversion state of one stream.
#[derive(Debug, Default)]
pub struct ConsoleText {
    /// The start of a character whose rest is in the next chunk.
    carry: Vec<u8>,
}

const REPLACEMENT: &str = "\u{FFFD}";

impl ConsoleText {
    /// The text of `chunk` that can be written now.
    pub fn convert(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(chunk);
        let mut text = Vec::with_capacity(bytes.len());
        let mut pieces = bytes.utf8_chunks().peekable();
        while let Some(piece) = pieces.next() {
            text.extend_from_slice(piece.valid().as_bytes());
            let invalid = piece.invalid();
            if invalid.is_empty() {
                continue;
            }
            let cut_short = std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none());
            if pieces.peek().is_none() && cut_short {
                self.carry = invalid.to_vec();
            } else {
                text.extend_from_slice(REPLACEMENT.as_bytes());
            }
        }
        text
    }

    /// What is left when the stream ends: a cut character, shown as U+FFFD.
    pub fn finish(&mut self) -> Vec<u8> {
        if std::mem::take(&mut self.carry).is_empty() {
            Vec::new()
        } else {
            REPLACEMENT.as_bytes().to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_passes_and_invalid_bytes_become_replacement_characters() {
        let mut console = ConsoleText::default();
        assert_eq!(console.convert("grüße\n".as_bytes()), "grüße\n".as_bytes());
        assert_eq!(console.convert(b"caf\xe9 ok"), "caf\u{FFFD} ok".as_bytes());
        assert!(console.finish().is_empty());
    }

    #[test]
    fn a_character_cut_between_chunks_is_joined() {
        let mut console = ConsoleText::default();
        let euro = "€".as_bytes();
        let mut first = b"price: ".to_vec();
        first.extend_from_slice(&euro[..2]);
        assert_eq!(console.convert(&first), b"price: ");
        assert_eq!(console.convert(&euro[2..]), euro);
        // Cut and never completed: shown as one replacement at the end.
        assert_eq!(console.convert(&euro[..1]), b"");
        assert_eq!(console.finish(), REPLACEMENT.as_bytes());
    }
}
