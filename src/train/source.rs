//! Where training batches come from: a trait the loop pulls windows from, so that the loop can be
//! tested without a data stage, and an in-memory implementation.
//!
//! A source hands out fixed-length windows by number: window `k` depends only on the source's
//! seed and `k`, and the source's position is the number of windows drawn. A checkpoint stores
//! the position; a resumed run sets it back and sees exactly the batches it would have seen.

use super::error::{Result, TrainError};
use crate::data::seeded_below;

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

/// Windows at seeded random offsets of an in-memory token stream.
#[derive(Debug, Clone)]
pub struct TokenWindows {
    tokens: Vec<u32>,
    window: usize,
    seed: u64,
    position: u64,
}

impl TokenWindows {
    /// Windows of `window` tokens over `tokens`.
    pub fn new(tokens: Vec<u32>, window: usize, seed: u64) -> Result<Self> {
        if window == 0 || window > tokens.len() {
            return Err(TrainError::Data(format!(
                "a window of {window} tokens does not fit a stream of {} tokens",
                tokens.len()
            )));
        }
        Ok(TokenWindows {
            tokens,
            window,
            seed,
            position: 0,
        })
    }

    /// Window number `k`.
    pub fn window_at(&self, k: u64) -> &[u32] {
        let starts = (self.tokens.len() - self.window + 1) as u64;
        let s = seeded_below(self.seed, k, starts) as usize;
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
}
