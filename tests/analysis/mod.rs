//! The analysis and report helpers used together, as the attention and report stages will:
//! attention rows from logits -> entropy and distance profiles -> JS against a reference;
//! needle replies -> scores -> entropy-vs-error statistics -> tables and plots.

use ropelens::analysis::auroc::{BootstrapConfig, score_vs_outcome};
use ropelens::analysis::distance::{DistanceBuckets, DistanceProfile};
use ropelens::analysis::divergence::align_common_support;
use ropelens::analysis::entropy::{OnlineEntropy, entropy_of_logits, entropy_of_probs};
use ropelens::analysis::scoring::score_reply;
use ropelens::report::plots::{
    Heatmap, LineChart, Scale, Series, VLine, render_heatmap, render_line_chart,
};
use ropelens::report::tables::{Highlight, MatrixTable};

/// Causal attention logits of a head whose score falls with log distance, with positions
/// divided by `stretch` (what position interpolation does to relative distances).
fn logits_row(query: usize, stretch: f64) -> Vec<f64> {
    (0..=query)
        .map(|k| {
            let d = (query - k) as f64 / stretch;
            -1.5 * (1.0 + d).ln() + 0.3 * ((k * 7919 % 13) as f64 / 13.0)
        })
        .collect()
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

fn profile(len: usize, stretch: f64) -> (DistanceProfile, f64) {
    let mut p = DistanceProfile::new(DistanceBuckets::default());
    let mut entropy_sum = 0.0;
    for q in 0..len {
        let logits = logits_row(q, stretch);
        let probs = softmax(&logits);
        p.add_causal_row(&probs).unwrap();
        // Three ways to the same entropy.
        let h = entropy_of_probs(&probs).unwrap();
        let h_logits = entropy_of_logits(&logits).unwrap();
        let mut online = OnlineEntropy::new();
        for block in logits.chunks(7) {
            online.push_block(block).unwrap();
        }
        assert!((h - h_logits).abs() < 1e-9 && (h - online.entropy().unwrap()).abs() < 1e-9);
        entropy_sum += h;
    }
    (p, entropy_sum / len as f64)
}

#[test]
fn attention_pattern_kept_vs_stretched() {
    let (reference, h_ref) = profile(64, 1.0);
    let (same_pattern_long, h_long) = profile(256, 1.0);
    let (stretched_long, h_stretched) = profile(256, 4.0);
    assert_eq!(reference.len(), 7, "distances 0..63 need buckets 0..=6");
    assert_eq!(same_pattern_long.len(), 9);

    let js = |p: &DistanceProfile| {
        let aligned =
            align_common_support(&reference.mean_probability(), &p.mean_probability()).unwrap();
        assert_eq!(aligned.buckets, 7);
        assert_eq!(aligned.p_outside, 0.0);
        assert!(
            aligned.q_outside > 0.0,
            "the longer run has buckets beyond the reference"
        );
        aligned.js().unwrap()
    };
    let js_same = js(&same_pattern_long);
    let js_stretched = js(&stretched_long);
    assert!(
        js_same < 1e-3,
        "same pattern at a longer length: JS {js_same}"
    );
    assert!(
        js_stretched > 10.0 * js_same && js_stretched < std::f64::consts::LN_2,
        "stretched pattern: JS {js_stretched} vs {js_same}"
    );
    // Longer contexts spread attention: entropy grows with length, more so when stretched.
    assert!(
        h_ref < h_long && h_long < h_stretched,
        "{h_ref} {h_long} {h_stretched}"
    );
}

#[test]
fn needle_cells_to_statistics_table_and_plots() {
    // (length, depth, reply, mean entropy) for a key "4 0 9 1 7".
    let key = "4 0 9 1 7";
    let cells = [
        (128, 0, " 4 0 9 1 7 .", 2.1),
        (128, 50, " 4 0 9 1 7 .", 2.3),
        (512, 0, " 4 0 9 1 7 . the", 2.9),
        (512, 50, " 4 0 9 7 .", 3.4),
        (2048, 0, " 1 1 1 1 1 .", 4.2),
        (2048, 50, " 4 0 9 1 7 .", 3.1),
    ];
    let mut failed = Vec::new();
    let mut entropy = Vec::new();
    let mut table = MatrixTable::new("depth \\ length");
    for &(len, depth, reply, h) in &cells {
        let s = score_reply(reply, key);
        failed.push(s.exact == Some(false));
        entropy.push(h);
        table.set(&format!("{depth}%"), &len.to_string(), s.overlap);
    }
    assert_eq!(failed, [false, false, false, true, true, false]);
    let stats = score_vs_outcome(&entropy, &failed, &BootstrapConfig::default()).unwrap();
    assert_eq!((stats.positives, stats.negatives), (2, 4));
    // Failures at 3.4 and 4.2 vs passes 2.1, 2.3, 2.9, 3.1: all 8 pairs ordered -> AUROC 1.
    assert_eq!(stats.auroc.as_ref().unwrap().value, 1.0);
    let md = table.to_markdown(2, Highlight::MaxPerColumn);
    let expected = "\
| depth \\ length |      128 |      512 |     2048 |
| :------------- | -------: | -------: | -------: |
| 0%             | **1.00** | **1.00** |     0.20 |
| 50%            | **1.00** |     0.80 | **1.00** |
";
    assert_eq!(md, expected);

    let dir = tempfile::tempdir().unwrap();
    let lengths = [128.0, 512.0, 2048.0];
    let mut chart = LineChart::new("entropy vs length", "length", "entropy (nats)");
    chart.x_scale = Scale::Log2;
    chart.series = vec![Series::new(
        "model",
        lengths
            .iter()
            .zip([2.2, 3.15, 3.65])
            .map(|(a, b)| (*a, b))
            .collect(),
    )];
    chart.vlines = vec![VLine::new(512.0, "train")];
    let path = dir.path().join("nested/dir/entropy.png");
    render_line_chart(&chart, &path).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 1000);

    let grid = |f: &dyn Fn(usize) -> f64| -> Vec<Vec<Option<f64>>> {
        (0..2)
            .map(|r| (0..3).map(|c| Some(f(r * 3 + c))).collect())
            .collect()
    };
    // Cells are listed length-major above; regroup as rows = depth.
    let order = [[0, 2, 4], [1, 3, 5]];
    let mut map = Heatmap::new(
        "needle",
        lengths.iter().map(|l| l.to_string()).collect(),
        vec!["0%".into(), "50%".into()],
        grid(&|i| {
            if failed[order[i / 3][i % 3]] {
                0.0
            } else {
                1.0
            }
        }),
    );
    map.annotations = Some(grid(&|i| entropy[order[i / 3][i % 3]]));
    map.vline = Some(VLine::new(
        Heatmap::boundary_after(&lengths, 512.0),
        "train 512",
    ));
    let layout = render_heatmap(&map, &dir.path().join("needle.png")).unwrap();
    assert_eq!((layout.rows, layout.columns), (2, 3));
}
