//! Text that came from a request or from user code, made safe for one log line.
//!
//! A client controls what a stage's exception says (the inputs it echoes) and user code controls the rest: logged
//! raw, a newline or an ANSI escape in it could forge a log record or repaint the operator's terminal. Every such
//! text is logged through `log_text`, which writes control characters as escapes (`\n`, `\u{1b}`).

use std::fmt;

/// Displays its text with every control character escaped.
pub struct Escaped<'a>(&'a str);

/// `text` for a log line: control characters escaped, everything else as is.
pub fn log_text(text: &str) -> Escaped<'_> {
    Escaped(text)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::log_text;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let forged = "boom\n2026-12-08T00:00:00Z  INFO fake record\r\u{1b}[31mred\u{7}é漢";
        assert_eq!(
            log_text(forged).to_string(),
            "boom\\n2026-12-08T00:00:00Z  INFO fake record\\r\\u{1b}[31mred\\u{7}é漢"
        );
        assert_eq!(
            log_text("plain text, tabs\tand all").to_string(),
            "plain text, tabs\\tand all"
        );
    }
}
