//! ggml tensor types to f32: the float types and the block quantizations ropelens reads
//! (Q8_0, Q4_0, Q4_1 and the K-quants Q4_K, Q5_K, Q6_K), following ggml's reference
//! `dequantize_row_*` (ggml-quants.c) operation for operation in f32, so the values equal
//! gguf-py's `quants.dequantize` (checked by the fixtures of tests/fixtures/make_gguf_fixtures.py).

use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml type ropelens dequantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q4K,
    Q5K,
    Q6K,
}

/// ggml's type codes and names (ggml.h `enum ggml_type`), for reading and for errors.
const TYPE_NAMES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// The name of a ggml type code (`type 99` when unknown).
pub fn type_name(code: u32) -> String {
    TYPE_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| format!("type {code}"), |(_, n)| n.to_string())
}

impl GgmlType {
    /// The type of a code, or an error message naming the unsupported type.
    pub fn from_code(code: u32) -> Result<GgmlType, String> {
        Ok(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            30 => GgmlType::Bf16,
            8 => GgmlType::Q8_0,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            other => {
                return Err(format!(
                    "ggml type {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K are)",
                    type_name(other)
                ));
            }
        })
    }

    /// (elements, bytes) of one block.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
        }
    }

    /// Bytes of `n` elements, or `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (e, b) = self.block();
        n.is_multiple_of(e).then(|| n / e * b)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize `bytes` (a whole number of blocks, see [`GgmlType::bytes_for`]) into `out`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (per, size) = ty.block();
    // Blocks are independent: split the work in groups of blocks.
    let group = (4096 / per).max(1);
    out.par_chunks_mut(per * group)
        .zip(bytes.par_chunks(size * group))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(per).zip(x.chunks_exact(size)) {
                block(ty, x, y);
            }
        });
}

/// One block.
fn block(ty: GgmlType, x: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]),
        GgmlType::F16 => y[0] = f16_at(x, 0),
        GgmlType::Bf16 => y[0] = bf16::from_le_bytes([x[0], x[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = f16_at(x, 0);
            for (j, q) in x[2..34].iter().enumerate() {
                y[j] = (*q as i8) as f32 * d;
            }
        }
        GgmlType::Q4_0 => {
            let d = f16_at(x, 0);
            for (j, q) in x[2..18].iter().enumerate() {
                y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(x, 0), f16_at(x, 2));
            for (j, q) in x[4..20].iter().enumerate() {
                y[j] = (q & 0xF) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q4K => k_quant_4_5(x, &x[16..144], None, y),
        GgmlType::Q5K => k_quant_4_5(x, &x[48..176], Some(&x[16..48]), y),
        GgmlType::Q6K => {
            let d = f16_at(x, 208);
            for half in 0..2 {
                let ql = &x[64 * half..64 * half + 64];
                let qh = &x[128 + 32 * half..128 + 32 * half + 32];
                let sc = &x[192 + 8 * half..192 + 8 * half + 8];
                let y = &mut y[128 * half..128 * half + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let s = |k: usize| d * (sc[is + k] as i8) as f32;
                    y[l] = s(0) * q1 as f32;
                    y[l + 32] = s(2) * q2 as f32;
                    y[l + 64] = s(4) * q3 as f32;
                    y[l + 96] = s(6) * q4 as f32;
                }
            }
        }
    }
}

/// Q4_K and Q5_K, which differ only in Q5_K's fifth bit: `x` is the block (f16 `d` and `dmin`,
/// then 12 bytes of packed 6-bit scales and mins), `qs` its 4 x 32 bytes of nibbles (group `g`'s
/// 64 values are the low nibbles, then the high ones), `qh` Q5_K's 32 bytes of fifth bits (bits
/// `2g` and `2g + 1` for the two halves of group `g`).
fn k_quant_4_5(x: &[u8], qs: &[u8], qh: Option<&[u8]>, y: &mut [f32]) {
    let (d, dmin) = (f16_at(x, 0), f16_at(x, 2));
    let scales = &x[4..16];
    let high = |l: usize, bit: u8| qh.map_or(0, |h| if h[l] & bit != 0 { 16 } else { 0 });
    for (g, q) in qs.chunks_exact(32).enumerate() {
        let [(d1, m1), (d2, m2)] = [2 * g, 2 * g + 1].map(|j| {
            let (sc, m) = scale_min_k4(j, scales);
            (d * sc as f32, dmin * m as f32)
        });
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let y = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            y[l] = d1 * ((q[l] & 0xF) + high(l, u1)) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + high(l, u2)) as f32 - m2;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` of a K-quant block (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_blocks_by_hand() {
        // Q8_0: d = 0.5, q = -3, 4, 0...
        let mut x = vec![0u8; 34];
        x[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        x[2] = (-3i8) as u8;
        x[3] = 4;
        let mut y = vec![0f32; 32];
        dequantize(GgmlType::Q8_0, &x, &mut y);
        assert_eq!(&y[..3], &[-1.5, 2.0, 0.0]);
        // Q4_1: d = 2, m = -1; byte 0x31 -> low 1, high 3.
        let mut x = vec![0u8; 20];
        x[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        x[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        x[4] = 0x31;
        dequantize(GgmlType::Q4_1, &x, &mut y);
        assert_eq!((y[0], y[16], y[1]), (1.0, 5.0, -1.0));
        assert_eq!(GgmlType::Q6K.bytes_for(512), Some(420));
        assert_eq!(GgmlType::Q6K.bytes_for(100), None);
        assert_eq!(
            GgmlType::from_code(10).unwrap_err(),
            "ggml type Q2_K is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K are)"
        );
    }
}
