//! The frames one side of a run connection has sent, numbered from the first
//! after `Run` and kept, up to a bound, so that those the other side did not
//! get can be sent again once the VM has moved (`ResumePoint`). The agent
//! keeps its output this way, the host its input.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct SentFrames {
    /// Encoded frames, oldest first: numbers `first..next()`.
    frames: VecDeque<Vec<u8>>,
    first: u64,
    bytes: usize,
}

impl SentFrames {
    /// None kept yet; the next is number `first` (frames before it were
    /// sent on another host, before the VM moved here).
    pub fn starting_at(first: u64) -> SentFrames {
        SentFrames {
            first,
            ..SentFrames::default()
        }
    }

    /// The number the next frame gets (how many were sent).
    pub fn next(&self) -> u64 {
        self.first + self.frames.len() as u64
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `frame` (encoded) as the next one.
    pub fn push(&mut self, frame: Vec<u8>) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Drops the oldest frames while more than `max` bytes are kept, but
    /// never frame `keep_from` or a later one.
    pub fn trim(&mut self, max: usize, keep_from: u64) {
        while self.bytes > max && self.first < keep_from {
            let Some(oldest) = self.frames.pop_front() else { break };
            self.bytes -= oldest.len();
            self.first += 1;
        }
    }

    /// For a peer that holds the first `held` frames (a number from the
    /// other side of a VM boundary, so clamped to what there is): where
    /// sending again starts, and the frames from there. It starts later
    /// than `held` if those frames are no longer kept.
    pub fn since(&self, held: u64) -> (u64, impl Iterator<Item = &[u8]>) {
        let from = held.clamp(self.first, self.next());
        (
            from,
            self.frames.iter().skip((from - self.first) as usize).map(Vec::as_slice),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_numbered_trimmed_oldest_first_and_sent_again_from_what_is_held() {
        let mut sent = SentFrames::default();
        for n in 0..5u8 {
            sent.push(vec![n; 10]);
        }
        assert_eq!((sent.next(), sent.bytes()), (5, 50));
        // Frame 2 on is still wanted: only 0 and 1 may go.
        sent.trim(20, 2);
        assert_eq!((sent.next(), sent.bytes()), (5, 30));
        let (from, frames) = sent.since(3);
        assert_eq!(from, 3);
        assert_eq!(frames.collect::<Vec<_>>(), vec![&[3u8; 10][..], &[4; 10]]);
        // Held less than is kept: from the oldest kept; more than was sent: nothing.
        assert_eq!(sent.since(0).0, 2);
        let (from, frames) = sent.since(99);
        assert_eq!((from, frames.count()), (5, 0));
        sent.trim(0, u64::MAX);
        assert_eq!((sent.next(), sent.bytes(), sent.since(0).0), (5, 0, 5));
    }
}
