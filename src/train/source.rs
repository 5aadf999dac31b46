//! Where training batches come from: a trait the loop pulls windows from, so that the loop can be
//! tested without a data stage, and an in-memory implementation.
//!
//! A source hands out fixed-length windows by number: window `k` depends only on the source's
//! seed and `k`, and the source's position is the number of windows drawn. A checkpoint stores
//! the position; a resumed run sets it back and sees exactly the batches it would have seen.

use super::error::{Result, TrainError};
use crate::data::{seeded_below, sequential_start};

/// Seeded fixed-length token windows, drawn in order.
pub trait BatchSource: Send {
    /// Tokens per window (`seq_len + 1` for next-token training at `seq_len`).
    fn window(&self) -> usize;
    /// The next `rows` windows, row-major (`rows * window` tokens).
    fn next_batch(&mut self, rows: usize) -> Result<Vec<u32>>;
    /// Windows drawn so far.
    fn position(&self) -> u64;
    /// Continue from window number `position`.
    fn set_position(&mut self, position: u64);
}

/// Where the windows of a [`TokenWindows`] start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// At seeded random offsets (`train.sample = "stream"`).
    Seeded(u64),
    /// In stream order (`train.sample = "sequential"`, [`sequential_start`]).
    Sequential,
}

/// Windows of an in-memory token stream: at seeded random offsets, or in stream order.
#[derive(Debug, Clone)]
pub struct TokenWindows {
    tokens: Vec<u32>,
    window: usize,
    order: Order,
    position: u64,
}

impl TokenWindows {
    /// Windows of `window` tokens at seeded random offsets of `tokens`.
    pub fn new(tokens: Vec<u32>, window: usize, seed: u64) -> Result<Self> {
        Self::with_order(tokens, window, Order::Seeded(seed))
    }

    /// Windows of `window` tokens in stream order, as `train.sample = "sequential"` takes them
    /// ([`sequential_start`]).
    pub fn sequential(tokens: Vec<u32>, window: usize) -> Result<Self> {
        if window < 2 {
            return Err(TrainError::Data(format!(
                "sequential windows need at least 2 tokens, got {window}"
            )));
        }
        Self::with_order(tokens, window, Order::Sequential)
    }

    fn with_order(tokens: Vec<u32>, window: usize, order: Order) -> Result<Self> {
        if window == 0 || window > tokens.len() {
            return Err(TrainError::Data(format!(
                "a window of {window} tokens does not fit a stream of {} tokens",
                tokens.len()
            )));
        }
        Ok(TokenWindows {
            tokens,
            window,
            order,
            position: 0,
        })
    }

    /// Window number `k`.
    pub fn window_at(&self, k: u64) -> &[u32] {
        let len = self.tokens.len();
        let s = match self.order {
            Order::Seeded(seed) => seeded_below(seed, k, (len - self.window + 1) as u64) as usize,
            Order::Sequential => sequential_start(k, self.window, len),
        };
        &self.tokens[s..s + self.window]
    }
}

impl BatchSource for TokenWindows {
    fn window(&self) -> usize {
        self.window
    }

    fn next_batch(&mut self, rows: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(rows * self.window);
        for _ in 0..rows {
            out.extend_from_slice(self.window_at(self.position));
            self.position += 1;
        }
        Ok(out)
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn set_position(&mut self, position: u64) {
        self.position = position;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_depend_on_seed_and_number_only() {
        let tokens: Vec<u32> = (0..1000).collect();
        let mut a = TokenWindows::new(tokens.clone(), 9, 5).unwrap();
        let first = a.next_batch(3).unwrap();
        let second = a.next_batch(2).unwrap();
        assert_eq!(first.len(), 27);
        assert_eq!(a.position(), 5);
        let mut b = TokenWindows::new(tokens.clone(), 9, 5).unwrap();
        b.set_position(3);
        assert_eq!(b.next_batch(2).unwrap(), second);
        // Windows are contiguous runs of the stream.
        assert!(first.windows(2).take(8).all(|w| w[1] == w[0] + 1));
        let mut c = TokenWindows::new(tokens, 9, 6).unwrap();
        assert_ne!(c.next_batch(3).unwrap(), first);
        assert!(TokenWindows::new(vec![1, 2], 3, 0).is_err());
    }

    #[test]
    fn sequential_windows_follow_the_stream_and_wrap() {
        // 23 tokens, seq_len 5 (windows of 6): whole windows start at 0, 5, 10, 15 (the last
        // covers 15..21); token 21 and 22 are never a target; window 4 is window 0 again.
        let tokens: Vec<u32> = (0..23).collect();
        let mut w = TokenWindows::sequential(tokens, 6).unwrap();
        let batch = w.next_batch(5).unwrap();
        let starts: Vec<u32> = batch.chunks(6).map(|r| r[0]).collect();
        assert_eq!(starts, [0, 5, 10, 15, 0]);
        assert_eq!(&batch[18..24], &[15, 16, 17, 18, 19, 20]);
        w.set_position(6);
        assert_eq!(w.next_batch(1).unwrap(), [10, 11, 12, 13, 14, 15]);
        assert!(TokenWindows::sequential(vec![1, 2, 3], 1).is_err());
        assert!(TokenWindows::sequential(vec![1, 2, 3], 4).is_err());
    }
}
