//! Docker's detach keys: a key sequence (ctrl-p ctrl-q unless the client
//! names another) that, typed into a terminal attached to a container or an
//! exec, ends the attachment and leaves the process running. As in dockerd,
//! only a terminal's input is watched; the keys themselves never reach the
//! process, and the bytes of a sequence that breaks off do.

use crate::api::ApiError;

/// ctrl-p, ctrl-q.
const DEFAULT: [u8; 2] = [16, 17];

/// Docker's notation (`term.ToBytes`): keys separated by commas, each one
/// character or `ctrl-` and one of `a`-`z`, `@`, `[`, `\`, `]`, `^`, `_`.
fn parse(keys: &str) -> Option<Vec<u8>> {
    keys.split(',')
        .map(|key| match key.as_bytes() {
            [one] => Some(*one),
            _ => {
                let rest = key.strip_prefix("ctrl-")?.to_ascii_lowercase();
                match rest.as_bytes() {
                    [c @ b'a'..=b'z'] => Some(c - b'a' + 1),
                    b"@" => Some(0),
                    b"[" => Some(27),
                    b"\\" => Some(28),
                    b"]" => Some(29),
                    b"^" => Some(30),
                    b"_" => Some(31),
                    _ => None,
                }
            }
        })
        .collect()
}

/// The sequence a request names (`what` says where, in dockerd's words),
/// Docker's default when it names none; 400 when it cannot be read.
pub fn keys(requested: Option<&str>, what: &str) -> Result<Vec<u8>, ApiError> {
    match requested.filter(|k| !k.is_empty()) {
        None => Ok(DEFAULT.to_vec()),
        Some(text) => {
            parse(text).ok_or_else(|| ApiError::bad_request(format!("Invalid {what} keys ({text}) provided")))
        }
    }
}

/// Watches a terminal's input for the sequence.
#[derive(Debug, Clone)]
pub struct Escape {
    keys: Vec<u8>,
    /// How many of the keys the input ends with so far (held back).
    matched: usize,
}

impl Escape {
    pub fn new(keys: Vec<u8>) -> Escape {
        Escape { keys, matched: 0 }
    }

    /// What of `input` goes on to the process, and whether the sequence
    /// is complete (the client detached: input after it is dropped).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if self.keys.get(self.matched) != Some(&byte) && self.matched > 0 {
                // The sequence broke off: what was held back was typed input.
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
            }
            if self.keys.get(self.matched) == Some(&byte) {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return (out, true);
                }
            } else {
                out.push(byte);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_docker_reads_them() {
        assert_eq!(keys(None, "detach").unwrap(), [16, 17]);
        assert_eq!(keys(Some(""), "detach").unwrap(), [16, 17]);
        assert_eq!(keys(Some("ctrl-x,y"), "detach").unwrap(), [24, b'y']);
        assert_eq!(
            keys(Some("ctrl-A,ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_"), "detach").unwrap(),
            [1, 0, 27, 28, 29, 30, 31]
        );
        assert_eq!(keys(Some("a,b,c"), "detach").unwrap(), b"abc");
        for bad in ["ctrl-", "ctrl-1", "ab", "x,,y", "ctrl-xx", "shift-a", ","] {
            let e = keys(Some(bad), "detach").unwrap_err();
            assert_eq!(e.message, format!("Invalid detach keys ({bad}) provided"), "{bad}");
        }
    }

    #[test]
    fn the_sequence_is_held_back_and_broken_sequences_pass_on() {
        let mut escape = Escape::new(vec![16, 17]);
        assert_eq!(escape.feed(b"ls\x10"), (b"ls".to_vec(), false), "a first key is held");
        assert_eq!(
            escape.feed(b"a"),
            (b"\x10a".to_vec(), false),
            "then passed on when the next is not the sequence"
        );
        assert_eq!(
            escape.feed(b"\x10\x10"),
            (b"\x10".to_vec(), false),
            "a repeated first key"
        );
        assert_eq!(
            escape.feed(b"\x11after"),
            (Vec::new(), true),
            "split across reads; what follows is dropped"
        );
        let mut single = Escape::new(vec![b'q']);
        assert_eq!(single.feed(b"abq"), (b"ab".to_vec(), true));
        let mut three = Escape::new(vec![1, 2, 3]);
        assert_eq!(three.feed(b"\x01\x02\x01\x02\x03"), (b"\x01\x02".to_vec(), true));
    }
}
