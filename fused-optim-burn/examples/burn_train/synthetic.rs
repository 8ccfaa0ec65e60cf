//! A small MNIST-format data set when no MNIST files are given: ten classes, each a fixed
//! set of three pen strokes on a 28 x 28 canvas; every image draws its class's strokes with
//! jittered end points, a random shift and stroke intensity, and pixel noise. Written as the
//! four standard idx files so the real reader reads them back.

use std::path::Path;

use fused_optim_tools::playground::data::Rng;
use fused_optim_tools::playground::idx::{encode, IdxArray};

const SIDE: usize = 28;

/// Segments ((x0, y0), (x1, y1)) of one class.
type Strokes = Vec<((f64, f64), (f64, f64))>;

fn class_strokes(rng: &mut Rng) -> Strokes {
    let mut point = || (6.0 + 16.0 * rng.uniform(), 6.0 + 16.0 * rng.uniform());
    (0..3).map(|_| (point(), point())).collect()
}

fn draw(strokes: &Strokes, rng: &mut Rng) -> Vec<u8> {
    let mut img = vec![0f64; SIDE * SIDE];
    let (dx, dy) = (4.0 * rng.uniform() - 2.0, 4.0 * rng.uniform() - 2.0);
    let ink = 0.7 + 0.3 * rng.uniform();
    for &((x0, y0), (x1, y1)) in strokes {
        let mut j = || 3.0 * rng.uniform() - 1.5;
        let (x0, y0, x1, y1) = (x0 + dx + j(), y0 + dy + j(), x1 + dx + j(), y1 + dy + j());
        let steps = 4 * ((x1 - x0).abs().max((y1 - y0).abs()) as usize + 1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (cx, cy) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            for py in cy.floor() as i64 - 1..=cy.ceil() as i64 + 1 {
                for px in cx.floor() as i64 - 1..=cx.ceil() as i64 + 1 {
                    if (0..SIDE as i64).contains(&px) && (0..SIDE as i64).contains(&py) {
                        let d2 = (px as f64 - cx).powi(2) + (py as f64 - cy).powi(2);
                        let v = ink * (-d2 / 1.2).exp();
                        let cell = &mut img[py as usize * SIDE + px as usize];
                        *cell = cell.max(v);
                    }
                }
            }
        }
    }
    img.iter()
        .map(|&v| ((v + 0.08 * rng.normal()).clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

fn write_set(
    dir: &Path,
    stem: &str,
    n: usize,
    classes: &[Strokes],
    rng: &mut Rng,
) -> std::io::Result<()> {
    let mut pixels = Vec::with_capacity(n * SIDE * SIDE);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let label = (rng.next_u64() % classes.len() as u64) as usize;
        pixels.extend(draw(&classes[label], rng));
        labels.push(label as u8);
    }
    let images = IdxArray {
        dims: vec![n, SIDE, SIDE],
        data: pixels,
    };
    let labels = IdxArray {
        dims: vec![n],
        data: labels,
    };
    std::fs::write(
        dir.join(format!("{stem}-images-idx3-ubyte")),
        encode(&images),
    )?;
    std::fs::write(
        dir.join(format!("{stem}-labels-idx1-ubyte")),
        encode(&labels),
    )
}

/// Write `train` training and `test` test images (MNIST file names) into `dir`.
pub fn write_mnist_like(dir: &Path, train: usize, test: usize, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng::new(seed);
    let classes: Vec<Strokes> = (0..10).map(|_| class_strokes(&mut rng)).collect();
    write_set(dir, "train", train, &classes, &mut rng)?;
    write_set(dir, "t10k", test, &classes, &mut rng)
}
