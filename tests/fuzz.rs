//! Fuzzing the inputs a user (or a corrupted disk) hands the library: checkpoint files,
//! hyper-parameters and `FlatParamsBuilder` segments. Seeded and reproducible (SplitMix64,
//! the seed is printed with every failure). `FUSED_OPTIM_FUZZ_CASES=N` sets the number of
//! random cases per family (default 2000); see `docs/reliability/fuzz.md` for what a long
//! run tried and found.
//!
//! Every input must give a typed `Error` or `Ok` as predicted — never a panic (each call
//! runs under `catch_unwind`, and a panic fails the test with the input) — and a refused
//! input leaves the optimizer bit-identical (state, step, lr, host scalars, config).
//! Checkpoint loads on the CPU paths are measured with a counting global allocator: the
//! peak growth must stay within a few times the file size.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{gpu, Rng};
use fused_optim::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

// ---------------------------------------------------------------------------------------
// A counting allocator: per-thread live bytes and peak (tests run on several threads; the
// loads measured here are single-threaded).

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        note(-(layout.size() as isize));
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `f()` and the peak growth of this thread's live heap bytes while it ran.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

// ---------------------------------------------------------------------------------------
// Shared helpers.

/// Random cases per family (`FUSED_OPTIM_FUZZ_CASES`, default 2000).
fn cases() -> usize {
    std::env::var("FUSED_OPTIM_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

/// A long run (`FUSED_OPTIM_FUZZ_CASES` above the default) also flips every bit of every
/// header byte, not one bit per byte.
fn long_run() -> bool {
    cases() > 2000
}

fn temp_dir(name: &str) -> PathBuf {
    // Thousands of small files per test: on a RAM file system where there is one.
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("fused-optim-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Everything observable of an optimizer, bit for bit.
#[derive(Debug, PartialEq)]
struct Snapshot {
    config: String,
    step: u64,
    lr: u64,
    host: String,
    state: Vec<(String, Vec<u64>)>,
}

fn snapshot(opt: &dyn Optimizer) -> Snapshot {
    let h = opt.host_state();
    Snapshot {
        config: format!("{:?}", opt.config()),
        step: opt.step_count(),
        lr: opt.lr().to_bits(),
        host: format!(
            "{} {} {} {:?}",
            h.step,
            h.lr.to_bits(),
            h.state_written,
            h.scalars.map(f64::to_bits)
        ),
        state: opt
            .state_names()
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    opt.read_state(n)
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect(),
                )
            })
            .collect(),
    }
}

fn describe(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(64).map(|b| format!("{b:02x}")).collect();
    format!("{} bytes, starting {}", bytes.len(), head.join(""))
}

/// Statistics of one fuzz family.
#[derive(Default, Debug)]
struct Tally {
    inputs: usize,
    refused: usize,
    accepted: usize,
    max_peak_ratio: f64,
}

// ---------------------------------------------------------------------------------------
// Checkpoints.

/// A checkpoint target: an optimizer and how it was made.
struct Target {
    what: String,
    opt: Box<dyn Optimizer>,
    /// A real checkpoint of a sibling optimizer (same config, other state).
    file: Vec<u8>,
    /// Count allocations (CPU paths only: the GPU path allocates staging buffers).
    measure: bool,
    /// The optimizer as it is (taken after construction and after every accepted load).
    snap: Option<Snapshot>,
}

/// Every registered algorithm's defaults and the variants with other state tensors.
fn checkpoint_configs() -> Vec<OptimizerConfig> {
    let mut v = OptimizerConfig::defaults();
    v.push(AdamConfig::adamw().into());
    v.push(
        AdamConfig {
            amsgrad: true,
            ..AdamConfig::default()
        }
        .into(),
    );
    v.push(
        SgdConfig {
            momentum: 0.9,
            ..SgdConfig::default()
        }
        .into(),
    );
    v.push(
        RmspropConfig {
            momentum: 0.5,
            centered: true,
            ..RmspropConfig::default()
        }
        .into(),
    );
    v.push(ScheduleFreeConfig::sgd().into());
    v
}

const N: usize = 7;

/// The N elements as one tensor: a 1 x N matrix for algorithms that take matrices only
/// (Muon), else a vector.
fn shape_of(config: OptimizerConfig) -> Vec<Vec<usize>> {
    if CpuOptimizer::new(config, N).is_ok() {
        vec![vec![N]]
    } else {
        vec![vec![1, N]]
    }
}

fn cpu_opt(config: OptimizerConfig) -> CpuOptimizer {
    CpuOptimizer::builder(config, N)
        .shapes(&shape_of(config))
        .build()
        .unwrap()
}

fn ref_opt(config: OptimizerConfig) -> ReferenceOptimizer {
    ReferenceOptimizer::with_shapes(config, &shape_of(config)).unwrap()
}

fn grads_f32(seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..N).map(|_| rng.normal() as f32).collect()
}

fn cpu_targets(dir: &Path) -> Vec<Target> {
    let mut out = Vec::new();
    for (k, config) in checkpoint_configs().into_iter().enumerate() {
        let file = dir.join(format!("real-{k}.safetensors"));
        // The sibling: two steps; the target: one step with other gradients.
        let mut sibling = cpu_opt(config);
        let mut p = vec![0.5f32; N];
        sibling.step(&mut p, &grads_f32(1)).unwrap();
        sibling.step(&mut p, &grads_f32(2)).unwrap();
        sibling.save_checkpoint(&file).unwrap();
        let f32_file = std::fs::read(&file).unwrap();
        let mut cpu = cpu_opt(config);
        cpu.step(&mut [0.25f32; N], &grads_f32(3)).unwrap();
        out.push(Target {
            what: format!("CpuOptimizer {config:?}"),
            opt: Box::new(cpu),
            file: f32_file,
            measure: true,
            snap: None,
        });
        let mut sibling = ref_opt(config);
        let mut p = vec![0.5f64; N];
        let g = |s| {
            grads_f32(s)
                .iter()
                .map(|&x| f64::from(x))
                .collect::<Vec<_>>()
        };
        sibling.step(&mut p, &g(1)).unwrap();
        sibling.step(&mut p, &g(2)).unwrap();
        sibling.save_checkpoint(&file).unwrap();
        let f64_file = std::fs::read(&file).unwrap();
        let mut reference = ref_opt(config);
        reference.step(&mut [0.25f64; N], &g(3)).unwrap();
        out.push(Target {
            what: format!("ReferenceOptimizer {config:?}"),
            opt: Box::new(reference),
            file: f64_file,
            measure: true,
            snap: None,
        });
    }
    out
}

/// Load `bytes` (written to `path`) into `t`; `Ok(true)` when it loaded. Fails the test on
/// a panic, on a refused load that changed the optimizer, and on a peak allocation past
/// 12 × the file size + 64 KiB (the worst case is a header of many tiny metadata entries,
/// which safetensors parses into a `HashMap<String, String>`: 9 × the file for 20000
/// entries, 18 × before the loader parsed the header once instead of three times).
fn try_load(t: &mut Target, path: &Path, bytes: &[u8], case: &str, tally: &mut Tally) -> bool {
    std::fs::write(path, bytes).unwrap();
    let before = match t.snap.take() {
        Some(s) => s,
        None => snapshot(t.opt.as_ref()),
    };
    let started = Instant::now();
    let (result, peak) =
        peak_growth(|| catch_unwind(AssertUnwindSafe(|| t.opt.load_checkpoint(path))));
    let elapsed = started.elapsed();
    let result = match result {
        Ok(r) => r,
        Err(_) => {
            let keep = path.with_extension("panic");
            std::fs::copy(path, &keep).ok();
            panic!(
                "{}: load_checkpoint panicked on {case} ({}); input kept at {}",
                t.what,
                describe(bytes),
                keep.display()
            );
        }
    };
    assert!(
        elapsed < Duration::from_secs(2),
        "{}: {case} took {elapsed:?}",
        t.what
    );
    tally.inputs += 1;
    if t.measure {
        let limit = 12 * bytes.len() + (64 << 10);
        assert!(
            peak <= limit,
            "{}: {case}: peak allocation growth {peak} bytes for a {}-byte file",
            t.what,
            bytes.len()
        );
        tally.max_peak_ratio = tally
            .max_peak_ratio
            .max(peak as f64 / bytes.len().max(1) as f64);
    }
    match result {
        Ok(()) => {
            tally.accepted += 1;
            t.snap = Some(snapshot(t.opt.as_ref()));
            true
        }
        Err(e) => {
            tally.refused += 1;
            let _: &Error = &e;
            assert_eq!(
                snapshot(t.opt.as_ref()),
                before,
                "{}: refused {case} ({e}) but changed the optimizer",
                t.what
            );
            t.snap = Some(before);
            false
        }
    }
}

/// Must be refused.
fn refused(t: &mut Target, path: &Path, bytes: &[u8], case: &str, tally: &mut Tally) {
    if try_load(t, path, bytes, case, tally) {
        panic!("{}: {case} was accepted ({})", t.what, describe(bytes));
    }
}

/// The header length (the first 8 bytes) of a safetensors file.
fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// A safetensors file from a raw JSON header and data (no checks: any framing).
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The metadata checksum as `src/checkpoint.rs` documents it (sorted keys, each key and
/// value prefixed by its u64 LE length), re-implemented here to re-seal edited files.
fn seal(meta: &mut HashMap<String, String>) {
    meta.remove("crc32.metadata");
    let mut keys: Vec<&String> = meta.keys().collect();
    keys.sort();
    let mut h = crc32fast::Hasher::new();
    for k in keys {
        for part in [k.as_bytes(), meta[k].as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    let crc = h.finalize().to_string();
    meta.insert("crc32.metadata".into(), crc);
}

/// A real file taken apart: metadata and tensors (name, dtype, shape, bytes).
type Parts = (
    HashMap<String, String>,
    Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
);

fn parts(bytes: &[u8]) -> Parts {
    let (_, m) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = m.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    (meta, tensors)
}

/// A file from parts as they are (no checksum recomputed).
fn unsealed(
    meta: &HashMap<String, String>,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, Some(meta.clone())).unwrap()
}

/// A file from parts, tensor checksums recomputed and the metadata re-sealed, so that the
/// loader's deeper checks (names, dtypes, shapes, values) are reached.
fn rebuild(
    meta: &HashMap<String, String>,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
) -> Vec<u8> {
    let mut meta = meta.clone();
    for (name, _, _, data) in tensors {
        meta.insert(format!("crc32.{name}"), crc32fast::hash(data).to_string());
    }
    seal(&mut meta);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// The random-bytes, truncation and bit-flip families over `targets`.
fn fuzz_framing(targets: &mut [Target], dir: &Path, seed: u64, every_offset: bool) -> [Tally; 3] {
    let path = dir.join("case.safetensors");
    let mut rng = Rng::new(seed);
    let mut random = Tally::default();
    let mut truncated = Tally::default();
    let mut flipped = Tally::default();
    let n = cases();
    let per_target = (n / targets.len().max(1)).max(8);
    for i in 0..n {
        let k = i % targets.len();
        let t = &mut targets[k];
        let len = (rng.next_u64() % 600) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        match i % 4 {
            // Plausible framing: a header length that fits, then JSON-ish text.
            1 if len > 9 => {
                bytes[..8]
                    .copy_from_slice(&((len as u64 - 8) >> (rng.next_u64() % 3)).to_le_bytes());
                bytes[8] = b'{';
            }
            // A prefix of the real file followed by noise.
            2 => {
                let cut = (rng.next_u64() as usize) % t.file.len();
                bytes = [&t.file[..cut], &bytes[..]].concat();
            }
            // The real header with random data.
            3 => {
                let h = 8 + header_len(&t.file);
                let data: Vec<u8> = (0..t.file.len() - h)
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                bytes = [&t.file[..h], &data[..]].concat();
            }
            _ => {}
        }
        if bytes == t.file {
            continue; // the real file itself (a real header over no data, for SGD)
        }
        let case = format!("random bytes #{i} (seed {seed})");
        if try_load(t, &path, &bytes, &case, &mut random) {
            let real = &t.file;
            let diff: Vec<usize> = (0..bytes.len().max(real.len()))
                .filter(|&j| bytes.get(j) != real.get(j))
                .collect();
            panic!(
                "{}: {case} accepted; differs from the real file at {diff:?}: {:?}",
                t.what,
                diff.iter()
                    .map(|&j| (bytes.get(j), real.get(j)))
                    .collect::<Vec<_>>()
            );
        }
    }
    for t in targets.iter_mut() {
        let file = t.file.clone();
        let step = if every_offset {
            1
        } else {
            (file.len() / 64).max(1)
        };
        for cut in (0..file.len()).step_by(step) {
            refused(
                t,
                &path,
                &file[..cut],
                &format!("truncated at {cut}"),
                &mut truncated,
            );
        }
        // One bit of every header byte (every bit in a long run), sampled data bytes.
        let h = 8 + header_len(&file);
        for at in 0..h {
            let bits: Vec<u8> = if long_run() {
                (0..8).collect()
            } else {
                vec![(rng.next_u64() % 8) as u8]
            };
            for bit in bits {
                let mut b = file.clone();
                b[at] ^= 1 << bit;
                refused(
                    t,
                    &path,
                    &b,
                    &format!("bit {bit} of header byte {at} flipped"),
                    &mut flipped,
                );
            }
        }
        for _ in 0..if file.len() > h { per_target } else { 0 } {
            let at = h + (rng.next_u64() as usize) % (file.len() - h);
            let bit = rng.next_u64() % 8;
            let mut b = file.clone();
            b[at] ^= 1 << bit;
            refused(
                t,
                &path,
                &b,
                &format!("bit {bit} of data byte {at} flipped"),
                &mut flipped,
            );
        }
    }
    [random, truncated, flipped]
}

/// Hand-made files: wrong dtypes, shapes and names, sizes past the file, duplicate
/// tensors, huge metadata, bad host scalars; and the control that a re-sealed unchanged
/// file loads (so the refusals are the edits').
fn fuzz_structure(t: &mut Target, dir: &Path, heavy: bool) -> Tally {
    let path = dir.join("case.safetensors");
    let mut tally = Tally::default();
    let (meta, tensors) = parts(&t.file);
    // Control: re-sealed, unchanged: accepted; then the target is put back.
    let before = snapshot(t.opt.as_ref());
    let own = dir.join("own.safetensors");
    t.opt.save_checkpoint(&own).unwrap();
    let own_bytes = std::fs::read(&own).unwrap();
    assert!(
        try_load(
            t,
            &path,
            &rebuild(&meta, &tensors),
            "the re-sealed real file",
            &mut tally
        ),
        "{}: the re-sealed real file was refused",
        t.what
    );
    assert!(try_load(
        t,
        &path,
        &own_bytes,
        "its own checkpoint",
        &mut tally
    ));
    assert_eq!(
        snapshot(t.opt.as_ref()),
        before,
        "{}: own checkpoint round trip",
        t.what
    );
    // A version-1 file (no metadata checksum) still loads; a version-2 file without the
    // checksum does not.
    let mut v1 = meta.clone();
    v1.remove("crc32.metadata");
    v1.insert("format".into(), checkpoint::FORMAT_V1.into());
    assert!(
        try_load(
            t,
            &path,
            &unsealed(&v1, &tensors),
            "a version-1 file",
            &mut tally
        ),
        "{}: a version-1 file was refused",
        t.what
    );
    assert!(try_load(
        t,
        &path,
        &own_bytes,
        "its own checkpoint",
        &mut tally
    ));
    assert_eq!(snapshot(t.opt.as_ref()), before);
    let mut v2 = meta.clone();
    v2.remove("crc32.metadata");
    refused(
        t,
        &path,
        &unsealed(&v2, &tensors),
        "a version-2 file without crc32.metadata",
        &mut tally,
    );

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // SGD without momentum has no state tensors: only an extra tensor can be edited in.
    let stateless = tensors.is_empty();
    // (The first tensor with elements: Adafactor's factors of a 1-D tensor are empty.)
    let first = tensors.iter().position(|t| t.2[0] > 0).unwrap_or(0);
    let (name, dt, n, elem) = match tensors.get(first) {
        Some(t0) => (
            t0.0.clone(),
            format!("{:?}", t0.1),
            t0.2[0],
            t0.3.len() / t0.2[0],
        ),
        None => ("momentum_buffer".to_string(), "F32".to_string(), N, 4),
    };
    if stateless {
        let extra = vec![(name.clone(), Dtype::F32, vec![n], vec![0u8; 4 * n])];
        cases.push(("an extra tensor".into(), rebuild(&meta, &extra)));
    }
    // Dtypes with the same byte length and with another.
    for dtype in [
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U8,
        Dtype::I64,
        Dtype::BOOL,
        Dtype::F8_E4M3,
    ]
    .into_iter()
    .filter(|_| !stateless)
    {
        let mut ts = tensors.clone();
        let size = dtype.bitsize() / 8;
        let (_, d, s, b) = &mut ts[first];
        *d = dtype;
        s[0] = b.len() / size.max(1);
        b.truncate(s[0] * size);
        cases.push((format!("dtype {dtype:?}"), rebuild(&meta, &ts)));
    }
    // Shapes.
    for shape in [
        vec![n + 1],
        vec![n - 1],
        vec![n, 1],
        vec![1, n],
        vec![],
        vec![0],
    ]
    .into_iter()
    .filter(|_| !stateless)
    {
        let mut ts = tensors.clone();
        let count: usize = shape.iter().product();
        ts[first].2 = shape.clone();
        ts[first].3 = vec![0u8; count * elem];
        cases.push((format!("shape {shape:?}"), rebuild(&meta, &ts)));
    }
    // Names: renamed, missing, extra, unicode.
    for (what, edit) in [("renamed", 0), ("missing", 1), ("extra", 2), ("unicode", 3)]
        .into_iter()
        .filter(|_| !stateless)
    {
        let mut ts = tensors.clone();
        match edit {
            0 => ts[first].0.push('x'),
            1 => {
                ts.remove(first);
            }
            2 => ts.push(("exp_avg\u{0}".into(), Dtype::F32, vec![n], vec![0; 4 * n])),
            _ => ts[first].0 = "ехр_avg \u{202e}".into(),
        }
        cases.push((format!("tensor name {what}"), rebuild(&meta, &ts)));
    }
    // Metadata values.
    let edits: &[(&str, &str)] = &[
        ("lr", "NaN"),
        ("lr", "inf"),
        ("lr", "-inf"),
        ("lr", "-1"),
        ("lr", "1e999"),
        ("lr", ""),
        ("step", "-1"),
        ("step", "18446744073709551616"),
        ("step", "1.5"),
        ("n", "0"),
        ("n", "99999999999999999999999"),
        ("n", &"9".repeat(100_000)),
        ("optimizer", "Adam\u{0}"),
        ("optimizer", "SGD"),
        ("optimizer", "AdamW"),
        ("hparams", "{}"),
        ("hparams", "{\"lr\": -1}"),
        ("hparams", "{\"lr\": 1e999}"),
        ("hparams", "{\"no_such_option\": 1}"),
        ("hparams", "[]"),
        ("format", "fused-optim-checkpoint/3"),
        // (`groups = []` is the same as no groups: a one-group optimizer accepts it.)
        ("groups", "[{}]"),
        ("groups", "not json"),
        ("mu_product", "NaN"),
        ("lr_max", "inf"),
        ("weight_sum", "NaN"),
    ];
    for (k, v) in edits {
        let mut m = meta.clone();
        if !m.contains_key(*k) && matches!(*k, "mu_product" | "lr_max" | "weight_sum") {
            continue;
        }
        if *k == "hparams" && *v == "{}" {
            // The defaults of the same class may be a valid config: only refused when the
            // structure differs; checked separately below.
            continue;
        }
        if meta.get(*k).map(String::as_str) == Some(*v) {
            continue; // not an edit
        }
        m.insert(k.to_string(), v.to_string());
        cases.push((format!("metadata {k} = {:.40}", v), rebuild(&m, &tensors)));
    }
    for k in [
        "format",
        "optimizer",
        "hparams",
        "step",
        "lr",
        "n",
        "state_written",
    ] {
        let mut m = meta.clone();
        m.remove(k);
        cases.push((format!("metadata without {k}"), rebuild(&m, &tensors)));
    }
    // Deeply nested and huge JSON in hparams and groups (`heavy`: for some targets only,
    // the loader's JSON handling is shared).
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for k in ["hparams", "groups"].into_iter().filter(|_| heavy) {
        let mut m = meta.clone();
        m.insert(k.into(), deep.clone());
        cases.push((format!("{k}: nesting 10^5 deep"), rebuild(&m, &tensors)));
    }
    if heavy {
        let mut m = meta.clone();
        m.insert("padding".into(), "x".repeat(8 << 20));
        m.insert("lr".into(), "NaN".into());
        cases.push((
            "8 MiB metadata string (and lr NaN)".into(),
            rebuild(&m, &tensors),
        ));
        let mut m = meta.clone();
        for i in 0..20_000 {
            m.insert(format!("k{i}"), i.to_string());
        }
        m.insert("format".into(), "x".into());
        cases.push((
            "20000 metadata keys (and a bad format)".into(),
            rebuild(&m, &tensors),
        ));
    }
    // Raw framing: sizes declared far past the file, duplicate tensors, header lengths.
    let meta_json = serde_json::to_string(&meta).unwrap();
    for (what, header) in [
        (
            "a tensor declaring 2^40 bytes",
            format!(
                r#"{{"__metadata__":{meta_json},"{name}":{{"dtype":"U8","shape":[1099511627776],"data_offsets":[0,1099511627776]}}}}"#
            ),
        ),
        (
            "a tensor declaring 2^62 elements",
            format!(
                r#"{{"__metadata__":{meta_json},"{name}":{{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,16]}}}}"#
            ),
        ),
        (
            "a shape whose product overflows",
            format!(
                r#"{{"__metadata__":{meta_json},"{name}":{{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}}}"#
            ),
        ),
        (
            "offsets past u64",
            format!(
                r#"{{"__metadata__":{meta_json},"{name}":{{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551616]}}}}"#
            ),
        ),
        (
            "a duplicate tensor",
            format!(
                r#"{{"__metadata__":{meta_json},"{name}":{{"dtype":"{dt}","shape":[{n}],"data_offsets":[0,{b}]}},"{name}":{{"dtype":"{dt}","shape":[{n}],"data_offsets":[{b},{b2}]}}}}"#,
                b = n * elem,
                b2 = 2 * n * elem
            ),
        ),
    ] {
        cases.push((
            what.to_string(),
            raw_file(&header, &vec![0u8; 2 * n * elem]),
        ));
    }
    let mut huge = t.file.clone();
    for len in [u64::MAX, 1 << 40, 100_000_001, (t.file.len() - 7) as u64] {
        huge[..8].copy_from_slice(&len.to_le_bytes());
        cases.push((format!("header length {len}"), huge.clone()));
    }
    for (what, bytes) in &cases {
        let started = Instant::now();
        refused(t, &path, bytes, what, &mut tally);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{}: {what}: slow",
            t.what
        );
    }
    tally
}

#[test]
fn fuzz_checkpoint_cpu_and_reference() {
    let dir = temp_dir("ckpt-cpu");
    let mut targets = cpu_targets(&dir);
    let started = Instant::now();
    let [random, truncated, flipped] = fuzz_framing(&mut targets, &dir, 0xC0FFEE, true);
    eprintln!("framing families: {:?}", started.elapsed());
    let started = Instant::now();
    let mut structure = Tally::default();
    for (k, t) in targets.iter_mut().enumerate() {
        let s = fuzz_structure(t, &dir, k % 8 == 0 || long_run());
        structure.inputs += s.inputs;
        structure.refused += s.refused;
        structure.accepted += s.accepted;
        structure.max_peak_ratio = structure.max_peak_ratio.max(s.max_peak_ratio);
    }
    eprintln!("structure family: {:?}", started.elapsed());
    for (what, tally) in [
        ("random bytes", &random),
        ("truncated", &truncated),
        ("bit flips", &flipped),
        ("structure", &structure),
    ] {
        eprintln!("fuzz_checkpoint_cpu_and_reference: {what}: {tally:?}");
    }
    assert_eq!(random.accepted + truncated.accepted + flipped.accepted, 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzz_checkpoint_gpu() {
    let Some(ctx) = gpu() else { return };
    let dir = temp_dir("ckpt-gpu");
    let mut targets = Vec::new();
    for config in [
        OptimizerConfig::from(AdamConfig::default()),
        NadamConfig::default().into(),
    ] {
        let file = dir.join("real.safetensors");
        let params = FlatParams::from_slice(&ctx, &[0.5; N]).unwrap();
        let mut sibling = GpuOptimizer::new(&params, config).unwrap();
        params.write_grads(&grads_f32(1)).unwrap();
        sibling.step().unwrap();
        sibling.save_checkpoint(&file).unwrap();
        let params = FlatParams::from_slice(&ctx, &[0.25; N]).unwrap();
        let mut opt = GpuOptimizer::new(&params, config).unwrap();
        params.write_grads(&grads_f32(3)).unwrap();
        opt.step().unwrap();
        targets.push(Target {
            what: format!("GpuOptimizer {config:?}"),
            opt: Box::new(opt),
            file: std::fs::read(&file).unwrap(),
            measure: false,
            snap: None,
        });
    }
    // The GPU loader shares the file checks with the CPU paths: a sample of each family
    // (truncation at every 64th of the file, one bit per header byte).
    let [random, truncated, flipped] = fuzz_framing(&mut targets, &dir, 0x6B0, false);
    let s = fuzz_structure(&mut targets[0], &dir, false);
    eprintln!("fuzz_checkpoint_gpu: {random:?} {truncated:?} {flipped:?} {s:?}");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------
// Hyper-parameters.

/// One f64 hyper-parameter: its name in `hparams()` (`betas[0]` for a pair's first), how to
/// set it, and the acceptance rules, written out: ours and the reference package's.
struct Field {
    name: &'static str,
    set: Box<dyn Fn(f64) -> OptimizerConfig>,
    ours: fn(f64) -> bool,
    reference: fn(f64) -> bool,
}

fn field<C: Into<OptimizerConfig> + Copy + 'static>(
    base: C,
    name: &'static str,
    set: fn(&mut C, f64),
    ours: fn(f64) -> bool,
    reference: fn(f64) -> bool,
) -> Field {
    Field {
        name,
        set: Box::new(move |v| {
            let mut c = base;
            set(&mut c, v);
            c.into()
        }),
        ours,
        reference,
    }
}

// Our rules.
fn finite_ge0(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}
fn finite_gt0(v: f64) -> bool {
    v.is_finite() && v > 0.0
}
fn finite(v: f64) -> bool {
    v.is_finite()
}
fn in_0_1_open_right(v: f64) -> bool {
    (0.0..1.0).contains(&v)
}
fn in_0_1_closed(v: f64) -> bool {
    (0.0..=1.0).contains(&v)
}
fn in_0_1_open(v: f64) -> bool {
    v > 0.0 && v < 1.0
}
// The references' rules, as their Python reads (NaN fails every comparison): written as
// the Python is, hence the lints allowed on them.
/// torch.optim's `if not 0.0 <= x: raise` (NaN refused, +inf accepted).
fn torch_not_0_le(v: f64) -> bool {
    0.0 <= v
}
/// torch.optim.SGD's `if x < 0.0: raise` (NaN and +inf accepted).
#[allow(clippy::neg_cmp_op_on_partial_ord, clippy::manual_range_contains)]
fn torch_lt_0_raises(v: f64) -> bool {
    !(v < 0.0)
}
/// `if not 0.0 <= beta < 1.0: raise`.
#[allow(clippy::neg_cmp_op_on_partial_ord, clippy::manual_range_contains)]
fn torch_beta(v: f64) -> bool {
    0.0 <= v && v < 1.0
}
/// Adadelta's `if not 0.0 <= rho <= 1.0: raise`.
#[allow(clippy::neg_cmp_op_on_partial_ord, clippy::manual_range_contains)]
fn torch_rho(v: f64) -> bool {
    0.0 <= v && v <= 1.0
}
/// No check at all.
fn unchecked(_: f64) -> bool {
    true
}
/// lion-pytorch's `assert lr > 0.`.
fn lion_lr(v: f64) -> bool {
    v > 0.0
}
/// schedulefree's SGDScheduleFree: `if momentum <= 0 or momentum >= 1: raise`.
#[allow(clippy::neg_cmp_op_on_partial_ord, clippy::manual_range_contains)]
fn sf_momentum(v: f64) -> bool {
    !(v <= 0.0 || v >= 1.0)
}

/// Every f64 hyper-parameter of `config`'s algorithm (exhaustive over the registry: a new
/// algorithm does not compile until it has a table).
fn fields(config: OptimizerConfig) -> Vec<Field> {
    match config {
        OptimizerConfig::Sgd(c) => vec![
            field(c, "lr", |x, v| x.lr = v, finite_ge0, torch_lt_0_raises),
            field(
                c,
                "momentum",
                |x, v| x.momentum = v,
                finite_ge0,
                torch_lt_0_raises,
            ),
            field(c, "dampening", |x, v| x.dampening = v, finite, unchecked),
            field(
                c,
                "weight_decay",
                |x, v| x.weight_decay = v,
                finite_ge0,
                torch_lt_0_raises,
            ),
        ],
        OptimizerConfig::Adagrad(c) => vec![
            field(c, "lr", |x, v| x.lr = v, finite_ge0, torch_not_0_le),
            field(
                c,
                "lr_decay",
                |x, v| x.lr_decay = v,
                finite_ge0,
                torch_not_0_le,
            ),
            field(
                c,
                "weight_decay",
                |x, v| x.weight_decay = v,
                finite_ge0,
                torch_not_0_le,
            ),
            field(
                c,
                "initial_accumulator_value",
                |x, v| x.initial_accumulator_value = v,
                finite_ge0,
                torch_not_0_le,
            ),
            field(c, "eps", |x, v| x.eps = v, finite_ge0, torch_not_0_le),
        ],
        OptimizerConfig::Rmsprop(c) => vec![
            field(c, "lr", |x, v| x.lr = v, finite_ge0, torch_not_0_le),
            field(c, "alpha", |x, v| x.alpha = v, finite_ge0, torch_not_0_le),
            field(c, "eps", |x, v| x.eps = v, finite_ge0, torch_not_0_le),
            field(
                c,
                "weight_decay",
                |x, v| x.weight_decay = v,
                finite_ge0,
                torch_not_0_le,
            ),
            field(
                c,
                "momentum",
                |x, v| x.momentum = v,
                finite_ge0,
                torch_not_0_le,
            ),
        ],
        OptimizerConfig::Adam(c) => adam_like(
            c,
            |x| &mut x.lr,
            |x| &mut x.betas,
            |x| &mut x.eps,
            |x| &mut x.weight_decay,
        ),
        OptimizerConfig::Nadam(c) => {
            let mut f = adam_like(
                c,
                |x| &mut x.lr,
                |x| &mut x.betas,
                |x| &mut x.eps,
                |x| &mut x.weight_decay,
            );
            f.push(field(
                c,
                "momentum_decay",
                |x, v| x.momentum_decay = v,
                finite_ge0,
                torch_not_0_le,
            ));
            f
        }
        OptimizerConfig::Adamax(c) => adam_like(
            c,
            |x| &mut x.lr,
            |x| &mut x.betas,
            |x| &mut x.eps,
            |x| &mut x.weight_decay,
        ),
        OptimizerConfig::Radam(c) => adam_like(
            c,
            |x| &mut x.lr,
            |x| &mut x.betas,
            |x| &mut x.eps,
            |x| &mut x.weight_decay,
        ),
        OptimizerConfig::Adadelta(c) => vec![
            field(c, "lr", |x, v| x.lr = v, finite_ge0, torch_not_0_le),
            field(c, "rho", |x, v| x.rho = v, in_0_1_closed, torch_rho),
            field(c, "eps", |x, v| x.eps = v, finite_ge0, torch_not_0_le),
            field(
                c,
                "weight_decay",
                |x, v| x.weight_decay = v,
                finite_ge0,
                torch_not_0_le,
            ),
        ],
        OptimizerConfig::Lion(c) => vec![
            field(c, "lr", |x, v| x.lr = v, finite_gt0, lion_lr),
            field(
                c,
                "betas[0]",
                |x, v| x.betas.0 = v,
                in_0_1_closed,
                torch_rho,
            ),
            field(
                c,
                "betas[1]",
                |x, v| x.betas.1 = v,
                in_0_1_closed,
                torch_rho,
            ),
            field(
                c,
                "weight_decay",
                |x, v| x.weight_decay = v,
                finite,
                unchecked,
            ),
        ],
        OptimizerConfig::Lamb(c) => vec![
            // pytorch_optimizer 4.1.0 validates lr, betas, weight_decay and eps (a negative
            // value raises); clamp and max_grad_norm are not checked there.
            field(c, "lr", |x, v| x.lr = v, finite_ge0, torch_lt_0_raises),
            field(
                c,
                "betas[0]",
                |x, v| x.betas.0 = v,
                in_0_1_open_right,
                torch_beta,
            ),
            field(
                c,
                "betas[1]",
                |x, v| x.betas.1 = v,
                in_0_1_open_right,
                torch_beta,
            ),
            field(
                c,
                "weight_decay",
                |x, v| x.weight_decay = v,
                finite_ge0,
                torch_lt_0_raises,
            ),
            field(c, "eps", |x, v| x.eps = v, finite_ge0, torch_lt_0_raises),
            field(
                c,
                "max_grad_norm",
                |x, v| x.max_grad_norm = v,
                finite_ge0,
                unchecked,
            ),
            field(c, "clamp", |x, v| x.clamp = v, finite_gt0, unchecked),
        ],
        OptimizerConfig::Adafactor(c) => vec![
            // torch.optim.Adafactor checks `0.0 <= lr`, `0.0 >= beta2_decay`,
            // `0.0 <= eps[0]` (when not None), `0.0 <= eps[1]`, `1.0 <= d` and
            // `0.0 <= weight_decay` (NaN refused, infinities let through); ours also refuse
            // infinities.
            field(c, "lr", |x, v| x.lr = v, finite_ge0, torch_not_0_le),
            field(
                c,
                "beta2_decay",
                |x, v| x.beta2_decay = v,
                |v| v.is_finite() && v <= 0.0,
                |v| v <= 0.0,
            ),
            field(
                c,
                "eps[0]",
                |x, v| x.eps1 = Some(v),
                finite_ge0,
                torch_not_0_le,
            ),
            field(c, "eps[1]", |x, v| x.eps2 = v, finite_ge0, torch_not_0_le),
            field(
                c,
                "d",
                |x, v| x.d = v,
                |v| v.is_finite() && v >= 1.0,
                |v| v >= 1.0,
            ),
            field(
                c,
                "weight_decay",
                |x, v| x.weight_decay = v,
                finite_ge0,
                torch_not_0_le,
            ),
        ],
        OptimizerConfig::Muon(c) => vec![
            // torch.optim.Muon checks `0.0 <= lr`, `0.0 <= momentum` and
            // `0.0 <= weight_decay`; eps and the coefficients are not checked there (ours
            // must be finite; a momentum above 1 is refused here as a diverging EMA).
            field(c, "lr", |x, v| x.lr = v, finite_ge0, torch_not_0_le),
            field(
                c,
                "weight_decay",
                |x, v| x.weight_decay = v,
                finite_ge0,
                torch_not_0_le,
            ),
            field(
                c,
                "momentum",
                |x, v| x.momentum = v,
                in_0_1_closed,
                torch_not_0_le,
            ),
            field(c, "eps", |x, v| x.ns.eps = v, finite_ge0, unchecked),
            field(
                c,
                "ns_coefficients[0]",
                |x, v| x.ns.coefficients.0 = v,
                finite,
                unchecked,
            ),
            field(
                c,
                "ns_coefficients[1]",
                |x, v| x.ns.coefficients.1 = v,
                finite,
                unchecked,
            ),
            field(
                c,
                "ns_coefficients[2]",
                |x, v| x.ns.coefficients.2 = v,
                finite,
                unchecked,
            ),
        ],
        OptimizerConfig::ScheduleFree(c) => {
            // AdamWScheduleFree checks nothing; SGDScheduleFree checks lr, weight_decay and
            // momentum.
            let sgd = c.base == ScheduleFreeBase::Sgd;
            let mut f = vec![
                field(
                    c,
                    "lr",
                    |x, v| x.lr = v,
                    finite_ge0,
                    if sgd { torch_lt_0_raises } else { unchecked },
                ),
                field(
                    c,
                    if sgd { "momentum" } else { "betas[0]" },
                    |x, v| x.beta = v,
                    in_0_1_open,
                    if sgd { sf_momentum } else { unchecked },
                ),
                field(
                    c,
                    "weight_decay",
                    |x, v| x.weight_decay = v,
                    finite_ge0,
                    if sgd { torch_lt_0_raises } else { unchecked },
                ),
                field(c, "r", |x, v| x.r = v, finite, unchecked),
                field(
                    c,
                    "weight_lr_power",
                    |x, v| x.weight_lr_power = v,
                    finite,
                    unchecked,
                ),
            ];
            if !sgd {
                f.push(field(
                    c,
                    "betas[1]",
                    |x, v| x.beta2 = v,
                    in_0_1_open_right,
                    unchecked,
                ));
                f.push(field(c, "eps", |x, v| x.eps = v, finite_ge0, unchecked));
            }
            f
        }
    }
}

/// Sets one field of a config.
type Setter<C> = Box<dyn Fn(&mut C, f64)>;

fn adam_like<C: Into<OptimizerConfig> + Copy + 'static>(
    c: C,
    lr: fn(&mut C) -> &mut f64,
    betas: fn(&mut C) -> &mut (f64, f64),
    eps: fn(&mut C) -> &mut f64,
    wd: fn(&mut C) -> &mut f64,
) -> Vec<Field> {
    // Closures over the accessors (fn pointers cannot capture, so each field boxes one).
    let mk = |name: &'static str,
              set: Setter<C>,
              ours: fn(f64) -> bool,
              reference: fn(f64) -> bool| Field {
        name,
        set: Box::new(move |v| {
            let mut x = c;
            set(&mut x, v);
            x.into()
        }),
        ours,
        reference,
    };
    vec![
        mk(
            "lr",
            Box::new(move |x, v| *lr(x) = v),
            finite_ge0,
            torch_not_0_le,
        ),
        mk(
            "betas[0]",
            Box::new(move |x, v| betas(x).0 = v),
            in_0_1_open_right,
            torch_beta,
        ),
        mk(
            "betas[1]",
            Box::new(move |x, v| betas(x).1 = v),
            in_0_1_open_right,
            torch_beta,
        ),
        mk(
            "eps",
            Box::new(move |x, v| *eps(x) = v),
            finite_ge0,
            torch_not_0_le,
        ),
        mk(
            "weight_decay",
            Box::new(move |x, v| *wd(x) = v),
            finite_ge0,
            torch_not_0_le,
        ),
    ]
}

/// The configurations whose fields are fuzzed: every registered default, AdamW and
/// Schedule-Free SGD.
fn hyper_configs() -> Vec<OptimizerConfig> {
    let mut v = OptimizerConfig::defaults();
    v.push(AdamConfig::adamw().into());
    v.push(ScheduleFreeConfig::sgd().into());
    v
}

/// The values every field is tried with.
fn special_values() -> Vec<f64> {
    let below_one = 1.0 - f64::EPSILON / 2.0;
    vec![
        f64::NAN,
        -f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        -0.0,
        0.0,
        f64::from_bits(1), // the smallest subnormal
        -f64::from_bits(1),
        f64::MIN_POSITIVE / 2.0, // subnormal
        f64::MIN_POSITIVE,
        1e-300,
        1e-8,
        0.5,
        below_one,
        1.0,
        1.0 + f64::EPSILON,
        2.0,
        1e300,
        f64::MAX,
        -f64::MAX,
        f64::from(f32::MAX) * 2.0, // finite in f64, inf in f32
    ]
}

/// `n` random values: random bit patterns and random magnitudes of both signs.
fn random_values(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| match i % 3 {
            0 => f64::from_bits(rng.next_u64()),
            1 => (rng.uniform() * 2.0 - 0.5) * 10f64.powf(rng.uniform() * 40.0 - 20.0),
            _ => rng.uniform() * 1.5 - 0.25,
        })
        .collect()
}

fn call<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => panic!("panicked: {what}"),
    }
}

#[test]
fn fuzz_hyperparameters_validate_matches_the_rules() {
    let mut rng = Rng::new(0x4850);
    let mut tried = 0usize;
    let mut differences: Vec<String> = Vec::new();
    for base in hyper_configs() {
        let table = fields(base);
        // Every numeric (non-integer) leaf of hparams() has a row.
        let mut leaves: Vec<String> = Vec::new();
        for (k, v) in base.hparams().as_object().unwrap() {
            match v {
                serde_json::Value::Number(x) if !x.is_u64() => leaves.push(k.clone()),
                serde_json::Value::Array(a) => {
                    leaves.extend((0..a.len()).map(|i| format!("{k}[{i}]")))
                }
                _ => {}
            }
        }
        let mut names: Vec<String> = table.iter().map(|f| f.name.to_string()).collect();
        leaves.sort();
        names.sort();
        assert_eq!(
            names,
            leaves,
            "{}: the table misses a hyper-parameter",
            base.name()
        );
        let mut values = special_values();
        values.extend(random_values(&mut rng, cases() / 4));
        for f in &table {
            for &v in &values {
                let config = (f.set)(v);
                let got = call(&format!("{} {} = {v:e}", base.name(), f.name), || {
                    config.validate()
                });
                tried += 1;
                let expected = (f.ours)(v);
                assert_eq!(
                    got.is_ok(),
                    expected,
                    "{}: {} = {v:e} ({v:?}): validate gave {got:?}",
                    base.name(),
                    f.name
                );
                if let Err(e) = &got {
                    assert!(
                        matches!(e, Error::InvalidHyperParameter { name, .. } if name.starts_with(f.name.split('[').next().unwrap()) || f.name.starts_with("betas") || *name == "beta"),
                        "{}: {} = {v:e}: the error names another field: {e}",
                        base.name(),
                        f.name
                    );
                }
                if expected != (f.reference)(v)
                    && special_values().iter().any(|s| s.to_bits() == v.to_bits())
                {
                    differences.push(format!(
                        "{} {} = {v:e}: ours {}, reference {}",
                        base.name(),
                        f.name,
                        if expected { "accepts" } else { "refuses" },
                        if expected { "refuses" } else { "accepts" }
                    ));
                }
            }
        }
    }
    eprintln!("fuzz_hyperparameters: {tried} validate() calls; differences from the references at the special values:");
    for d in &differences {
        eprintln!("  {d}");
    }
    // Every difference is one of the documented kinds: we refuse non-finite values the
    // reference lets through; the rest are listed in docs/reliability/fuzz.md.
    for d in &differences {
        assert!(
            d.contains("ours refuses"),
            "we accept what the reference refuses: {d}"
        );
    }
}

#[test]
fn fuzz_hyperparameters_set_lr_on_every_path() {
    let ctx = gpu();
    let mut rng = Rng::new(0x1A);
    let mut values = special_values();
    values.extend(random_values(&mut rng, cases() / 20));
    let mut tried = 0usize;
    for base in hyper_configs() {
        // set_lr's rule is the same for every algorithm: finite and >= 0 (Lion's
        // constructor wants lr > 0, as lion-pytorch asserts, but a schedule may reach 0; the
        // references check nothing when param_groups[k]["lr"] is assigned).
        let lr_rule = finite_ge0;
        let mut opts: Vec<(&str, Box<dyn Optimizer>)> = vec![
            ("cpu", Box::new(cpu_opt(base))),
            ("reference", Box::new(ref_opt(base))),
        ];
        let params = ctx.as_ref().map(|c| {
            FlatParams::builder()
                .shaped("t", &shape_of(base)[0], &[1.0; N])
                .build(c)
                .unwrap()
        });
        if let Some(p) = params.as_ref().filter(|_| base.runs_on_gpu()) {
            opts.push(("gpu", Box::new(GpuOptimizer::new(p, base).unwrap())));
        }
        for (path, opt) in &mut opts {
            for &v in &values {
                let before = opt.lr();
                let r = call(&format!("{path} {} set_lr({v:e})", base.name()), || {
                    opt.set_lr(v)
                });
                tried += 1;
                assert_eq!(
                    r.is_ok(),
                    lr_rule(v),
                    "{path} {}: set_lr({v:e}) gave {r:?}",
                    base.name()
                );
                let want = if r.is_ok() { v } else { before };
                assert_eq!(
                    opt.lr().to_bits(),
                    want.to_bits(),
                    "{path} {}: lr after set_lr({v:e})",
                    base.name()
                );
                assert_eq!(opt.host_state().lr.to_bits(), want.to_bits());
            }
        }
        if let (Some(_), Some(p), true) = (&ctx, &params, base.runs_on_gpu()) {
            // The GPU optimizer still steps after the refusals.
            let mut opt = GpuOptimizer::new(p, base).unwrap();
            for &v in &values {
                let _ = opt.set_lr(v);
            }
            opt.set_lr(1e-3).unwrap();
            opt.step().unwrap();
            assert!(p.read_params().unwrap().iter().all(|x| x.is_finite()));
        }
    }
    eprintln!("fuzz_hyperparameters_set_lr: {tried} set_lr calls");
}

// ---------------------------------------------------------------------------------------
// FlatParamsBuilder.

#[test]
fn fuzz_params_builder_huge_lengths_are_refused_before_allocating() {
    let Some(ctx) = gpu() else { return };
    let one = [1.0f32];
    let scalar = ndarray::ArrayView1::from(&one[..]);
    let max = fused_optim::MAX_BUILDER_ELEMENTS;
    let shapes: Vec<Vec<usize>> = vec![
        vec![max + 1],
        vec![u32::MAX as usize],
        vec![u32::MAX as usize - 2],
        vec![1 << 32],
        vec![65536, 65537],
        vec![1 << 40],
        vec![isize::MAX as usize / 8],
    ];
    for shape in shapes {
        let view = scalar
            .broadcast(ndarray::IxDyn(&shape))
            .expect("a broadcast view");
        let started = Instant::now();
        let (r, peak) = peak_growth(|| {
            call(&format!("shape {shape:?}"), || {
                FlatParams::builder()
                    .slice("a", &[1.0; 3])
                    .array("huge", &view)
                    .slice("b", &[2.0])
                    .build(&ctx)
            })
        });
        assert!(
            matches!(r, Err(Error::BufferTooLarge { .. })),
            "shape {shape:?}: {r:?}"
        );
        assert!(peak < 1 << 20, "shape {shape:?}: {peak} bytes allocated");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Lane alignment pushing a set past the limit.
    let view = scalar.broadcast(max - 2).unwrap();
    let (r, peak) = peak_growth(|| {
        FlatParams::builder()
            .lane_aligned()
            .slice("a", &[1.0; 3])
            .array("huge", &view)
            .build(&ctx)
    });
    assert!(matches!(r, Err(Error::BufferTooLarge { .. })), "{r:?}");
    assert!(peak < 1 << 20);
}

#[test]
fn fuzz_params_builder_random_segments() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(0xB111D);
    let pool = [
        "",
        "w",
        "w",
        "bias",
        "层.权重",
        "\u{0}",
        "e\u{301}",
        "é",
        "🦀",
        "a b",
        "x".repeat(10_000).leak(),
    ];
    let mut counts = (0usize, 0usize, 0usize, 0usize);
    for case in 0..cases() {
        let aligned = rng.next_u64().is_multiple_of(2);
        let segs = (rng.next_u64() % 6) as usize;
        let mut b = FlatParams::builder();
        if aligned {
            b = b.lane_aligned();
        }
        let mut model: Vec<(String, usize, usize)> = Vec::new(); // name, offset, len
        let mut end = 0usize;
        for s in 0..segs {
            let name = if rng.next_u64().is_multiple_of(3) {
                format!("{}{s}", pool[(rng.next_u64() as usize) % pool.len()])
            } else {
                pool[(rng.next_u64() as usize) % pool.len()].to_string()
            };
            let len = match rng.next_u64() % 8 {
                0 => 0,
                1 => 4,
                _ => (rng.next_u64() % 9) as usize,
            };
            let values: Vec<f32> = (0..len).map(|i| (case * 10 + i) as f32).collect();
            let offset = if aligned {
                end.next_multiple_of(4)
            } else {
                end
            };
            end = offset + len;
            model.push((name.clone(), offset, len));
            b = b.slice(&name, &values);
        }
        let r = call(&format!("case {case}: {model:?}"), || b.build(&ctx));
        // The expected outcome, from the model.
        let mut seen = std::collections::HashSet::new();
        let expected: std::result::Result<(), &str> = if end == 0 {
            Err("empty")
        } else {
            model
                .iter()
                .find_map(|(n, _, l)| {
                    if *l == 0 {
                        Some(Err("has no elements"))
                    } else if !seen.insert(n.clone()) {
                        Some(Err("appears twice"))
                    } else {
                        None
                    }
                })
                .unwrap_or(Ok(()))
        };
        match (&r, expected) {
            (Ok(flat), Ok(())) => {
                counts.0 += 1;
                assert_eq!(flat.len(), end, "case {case}");
                let got: Vec<(String, usize, usize)> = flat
                    .segments()
                    .iter()
                    .map(|s| (s.name.clone(), s.offset, s.len()))
                    .collect();
                assert_eq!(got, model, "case {case}");
                if case % 50 == 0 {
                    let p = flat.read_params().unwrap();
                    for (name, off, len) in &model {
                        assert_eq!(flat.read_segment_values(name).unwrap(), p[*off..off + len]);
                    }
                }
            }
            (Err(Error::Empty { .. }), Err("empty")) => counts.1 += 1,
            (Err(Error::Segment { reason, .. }), Err(want)) if *reason == want => {
                if want == "has no elements" {
                    counts.2 += 1
                } else {
                    counts.3 += 1
                }
            }
            _ => panic!("case {case}: {model:?}: got {r:?}, expected {expected:?}"),
        }
    }
    eprintln!(
        "fuzz_params_builder_random_segments: (built, empty, zero-length, duplicate) = {counts:?}"
    );
    assert!(counts.0 > 0 && counts.1 > 0 && counts.2 > 0 && counts.3 > 0);
}

#[test]
fn fuzz_params_builder_many_segments() {
    let Some(ctx) = gpu() else { return };
    let count = 20 * cases();
    let names: Vec<String> = (0..count).map(|i| format!("layer{i}.weight")).collect();
    let started = Instant::now();
    let mut b = FlatParams::builder().lane_aligned();
    for (i, n) in names.iter().enumerate() {
        b = b.slice(n, &[i as f32]);
    }
    let flat = b.build(&ctx).unwrap();
    assert_eq!(flat.segments().len(), count);
    assert_eq!(flat.len(), 4 * (count - 1) + 1);
    assert_eq!(
        flat.segment(&names[count - 1]).unwrap().offset,
        4 * (count - 1)
    );
    // A duplicate at the end of many is found (linearly).
    let mut b = FlatParams::builder();
    for n in names.iter().chain([&names[0]]) {
        b = b.slice(n, &[1.0]);
    }
    assert!(matches!(
        b.build(&ctx),
        Err(Error::Segment {
            reason: "appears twice",
            ..
        })
    ));
    eprintln!(
        "fuzz_params_builder_many_segments: {count} segments in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
