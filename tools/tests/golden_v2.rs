//! The `optim-golden/2` reader and metrics (`fused_optim_tools::golden::v2`) on the files in
//! golden/v2: every file parses and is self-consistent, every number is read exactly, the
//! metrics accept the expected values themselves and catch a 1% error placed by a seeded
//! choice, malformed files are typed errors, and an independent Lion written here from the
//! README's formulas replays the Lion cases through `replay_trajectory` (the driver end to end,
//! without the library's optimizers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fused_optim_tools::golden::v2::{
    self, replay_trajectory, state_error, Case2, Dtype, LrUnit, Metric, StateValue,
};
use fused_optim_tools::golden::{self, Golden};
use fused_optim_tools::Error;
use serde_json::Value;

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../golden/v2");
    assert!(d.is_dir(), "golden data not found at {}", d.display());
    d
}

fn files() -> Vec<PathBuf> {
    golden::collect_files(&[dir()]).unwrap()
}

fn case(name: &str) -> Case2 {
    v2::load(&dir().join(format!("{name}.json.gz")))
        .unwrap()
        .unwrap_or_else(|| panic!("{name} is not an optim-golden/2 case"))
}

fn cases() -> Vec<Case2> {
    files()
        .iter()
        .filter_map(|f| match golden::load_any(f) {
            Ok(Golden::V2(c)) => Some(c),
            Ok(Golden::NotACase) => None,
            Ok(Golden::V1(c)) => panic!("{}: an optim-golden/1 case in golden/v2", c.name),
            Err(e) => panic!("{e}"),
        })
        .collect()
}

/// Minimal seeded generator (SplitMix64), so a test's choices are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn every_file_parses_and_is_consistent() {
    let all = files();
    let index = golden::read_json(&dir().join("index.json")).unwrap();
    let listed: Vec<&str> = index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    let cases = cases();
    // Every case of the index is there, and nothing else but the index.
    assert_eq!(cases.len(), listed.len());
    assert_eq!(all.len(), listed.len() + 1);
    for c in &cases {
        assert!(listed.contains(&c.name.as_str()), "{} not in index", c.name);
        let file_name = c.file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(file_name, format!("{}.json.gz", c.name));
        assert!(!c.tensors.is_empty());
        assert_eq!(c.lr_per_step.len(), c.steps, "{}", c.name);
        let mut total = 0;
        for t in &c.tensors {
            assert_eq!(
                t.shape.iter().product::<usize>(),
                t.numel,
                "{}.{}",
                c.name,
                t.name
            );
            assert_eq!(t.params0.len(), t.numel);
            assert_eq!(t.grads.len(), c.steps, "{}.{}", c.name, t.name);
            assert!(t.grads.iter().all(|g| g.len() == t.numel));
            total += t.numel;
        }
        assert_eq!(c.numel(), total);
        // The README: float32 always, float64 where the package supports it (not 8-bit).
        assert!(c.float32.is_some(), "{}", c.name);
        assert_eq!(c.float64.is_none(), c.algorithm == "bnb8bit", "{}", c.name);
        for run in [&c.float32, &c.float64].into_iter().flatten() {
            assert_eq!(run.params.len(), c.tensors.len());
            for t in &c.tensors {
                let rows = &run.params[&t.name];
                assert_eq!(rows.len(), c.steps, "{}.{}", c.name, t.name);
                assert!(rows.iter().all(|r| r.len() == t.numel));
            }
            assert!(!run.final_state.is_empty(), "{}", c.name);
            for state in run.final_state.values() {
                for value in state.values() {
                    if let StateValue::Tensor { shape, data, .. } = value {
                        assert_eq!(shape.iter().product::<usize>(), data.len());
                    }
                }
            }
        }
    }
    for algorithm in [
        "lion",
        "schedulefree",
        "adafactor",
        "muon",
        "lamb",
        "bnb8bit",
    ] {
        assert!(
            cases.iter().any(|c| c.algorithm == algorithm),
            "no case for {algorithm}"
        );
    }
    // Fields the README names, read from a known case.
    let lion = case("lion_default");
    assert_eq!(lion.class, "lion_pytorch.Lion");
    assert_eq!(
        (lion.package.as_str(), lion.version.as_str()),
        ("lion-pytorch", "0.2.5")
    );
    assert_eq!(lion.model, "mlp3d");
    let names: Vec<_> = lion.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w1", "b1", "w2", "b2", "c1"]);
    assert_eq!(lion.tensor("c1").unwrap().shape, [2, 3, 4]);
    assert_eq!(lion.lr_per_step, vec![1e-4; 20]);
    assert_eq!(lion.kwargs["use_triton"], Value::Bool(false));
    assert!(lion.instance_attributes.is_some());
    let sched = case("lion_lr_schedule");
    assert_eq!(sched.lr_per_step[9], 0.0);
    assert_eq!(sched.lr_unit(), 2.0 * 3e-4);
    let q8 = case("adam8bit_default");
    match &q8.float32.as_ref().unwrap().final_state["w1"]["state1"] {
        StateValue::Tensor { dtype, shape, .. } => {
            assert_eq!(
                (dtype.as_str(), shape.as_slice()),
                ("uint8", &[15usize, 11][..])
            )
        }
        other => panic!("state1 is {other:?}"),
    }
}

/// The numbers of a JSON text as the standard library parses them (correctly rounded), in
/// text order, skipping strings.
fn raw_numbers(text: &str) -> Vec<f64> {
    let b = text.as_bytes();
    let (mut i, mut out) = (0, Vec::new());
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let s = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(text[s..i].parse::<f64>().unwrap());
            }
            _ => i += 1,
        }
    }
    out
}

fn value_numbers(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Number(n) => out.push(n.as_f64().unwrap()),
        Value::Array(a) => a.iter().for_each(|x| value_numbers(x, out)),
        Value::Object(m) => m.values().for_each(|x| value_numbers(x, out)),
        _ => {}
    }
}

/// "Parse all numbers as f64 (they round-trip exactly)": the JSON parser gives the correctly
/// rounded f64 of every number of every file (the same multiset of bit patterns as std's
/// parser on the raw text).
#[test]
fn every_number_is_read_exactly() {
    // At least the inputs and the parameter trajectories of every run.
    let least: usize = cases()
        .iter()
        .map(|c| {
            let runs = usize::from(c.float32.is_some()) + usize::from(c.float64.is_some());
            c.numel() * (1 + c.steps) * (1 + runs)
        })
        .sum();
    let mut checked = 0;
    for f in files() {
        let bytes = std::fs::read(&f).unwrap();
        let text = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::GzDecoder::new(bytes.as_slice()),
                &mut text,
            )
            .unwrap();
            text
        } else {
            String::from_utf8(bytes).unwrap()
        };
        let mut raw: Vec<u64> = raw_numbers(&text).iter().map(|x| x.to_bits()).collect();
        let mut parsed = Vec::new();
        value_numbers(&golden::read_json(&f).unwrap(), &mut parsed);
        let mut parsed: Vec<u64> = parsed.iter().map(|x| x.to_bits()).collect();
        raw.sort_unstable();
        parsed.sort_unstable();
        assert_eq!(raw.len(), parsed.len(), "{}", f.display());
        assert!(
            raw == parsed,
            "{}: a number was not read exactly",
            f.display()
        );
        checked += raw.len();
    }
    assert!(
        checked >= least,
        "only {checked} numbers checked, fewer than {least}"
    );
}

#[test]
fn flat_helpers_round_trip() {
    let c = case("lamb_default");
    let offsets = c.offsets();
    assert_eq!(offsets[0].start, 0);
    assert!(offsets.windows(2).all(|w| w[0].end == w[1].start));
    assert_eq!(offsets.last().unwrap().end, c.numel());
    let flat = c.flat_params0();
    let parts = c.split(&flat).unwrap();
    for ((name, part), t) in parts.iter().zip(&c.tensors) {
        assert_eq!((*name, *part), (t.name.as_str(), t.params0.as_slice()));
    }
    let g7 = c.flat_grads(7).unwrap();
    for ((_, part), t) in c.split(&g7).unwrap().iter().zip(&c.tensors) {
        assert_eq!(*part, t.grads[6].as_slice());
    }
    let run = c.run(Dtype::F64).unwrap();
    let p3 = run.flat_params(&c, 3).unwrap();
    for ((name, part), _) in c.split(&p3).unwrap().iter().zip(&c.tensors) {
        assert_eq!(*part, run.params[*name][2].as_slice());
    }
    assert!(matches!(
        c.split(&flat[1..]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(c.flat_grads(0), Err(Error::Golden { .. })));
    assert!(matches!(
        c.flat_grads(c.steps + 1),
        Err(Error::Golden { .. })
    ));
    assert!(matches!(
        case("adam8bit_default").run(Dtype::F64),
        Err(Error::Golden { .. })
    ));
}

/// A stepper that writes the expected parameters of step k (rounded to the run's dtype), with
/// `inject` = Some((k, flat index, factor)) multiplying one element at one step.
fn replay_expected(
    c: &Case2,
    dtype: Dtype,
    metric: &Metric,
    tol: f64,
    inject: Option<(usize, usize, f64)>,
) -> v2::Report2 {
    let run = c.run(dtype).unwrap();
    replay_trajectory(c, dtype, metric, tol, |k, _lr, p, _g| {
        let want = run.flat_params(c, k)?;
        for (x, w) in p.iter_mut().zip(&want) {
            *x = dtype.round(*w);
        }
        if let Some((step, i, factor)) = inject {
            if step == k {
                p[i] = dtype.round(p[i] * factor);
            }
        }
        Ok(())
    })
    .unwrap()
}

/// For each metric on a case it is meant for: the expected values score exactly 0; a 1% error
/// on one element at one step (seeded choice among elements where 1% is above the bound) fails
/// and the report names that tensor, step and element, with the ratio the formula predicts.
#[test]
fn metrics_accept_the_expected_values_and_catch_one_percent() {
    let muon = case("muon_default");
    let adjusted: BTreeMap<String, f64> = muon
        .tensors
        .iter()
        .map(|t| {
            let x = &muon.float32.as_ref().unwrap().extra.as_ref().unwrap()["ns_step1"][&t.name]
                ["adjusted_lr"];
            (t.name.clone(), x.as_f64().unwrap())
        })
        .collect();
    let q8 = case("adam8bit_default");
    let q8_unit = LrUnit::Same(q8.lr_unit());
    let setups: Vec<(Case2, Metric, f64)> = vec![
        (case("lion_wd"), Metric::M1, 1e-5),
        (case("sf_adamw_warmup"), Metric::M1, 1e-12),
        (case("adafactor_lr_schedule"), Metric::M2, 1e-5),
        (case("adafactor_default"), Metric::M2, 1e-12),
        (muon, Metric::M3(LrUnit::PerTensor(adjusted)), 0.1),
        (q8, Metric::M3(q8_unit), 0.5),
    ];
    let mut rng = Rng(0x5eed_601d);
    for (c, metric, tol) in &setups {
        for dtype in [Dtype::F32, Dtype::F64] {
            let Ok(run) = c.run(dtype) else { continue };
            let exact = replay_expected(c, dtype, metric, *tol, None);
            assert!(exact.passed(), "{exact}");
            assert_eq!(exact.checks.len(), c.tensors.len());
            assert!(
                exact.checks.iter().all(|ch| ch.worst.ratio == 0.0),
                "{exact}"
            );

            // Elements where a 1% error is at least 2x the bound.
            let offsets = c.offsets();
            let predicted = |t: usize, k: usize, i: usize| -> f64 {
                let tensor = &c.tensors[t];
                let exp: Vec<f64> = run.params[&tensor.name][k - 1]
                    .iter()
                    .map(|&x| dtype.round(x))
                    .collect();
                let e = exp[i];
                let rms = (exp.iter().map(|x| x * x).sum::<f64>() / exp.len() as f64).sqrt();
                let scale = match metric {
                    Metric::M1 => e.abs().max(tensor.params0[i].abs()).max(1e-2),
                    Metric::M2 => e.abs().max(tensor.params0[i].abs()).max(1e-2).max(rms),
                    Metric::M3(LrUnit::Same(u)) => *u,
                    Metric::M3(LrUnit::PerTensor(m)) => m[&tensor.name],
                };
                (dtype.round(e * 1.01) - e).abs() / (tol * k as f64 * scale)
            };
            let mut attempts = 0;
            let (t, k, i) = loop {
                attempts += 1;
                assert!(
                    attempts < 100_000,
                    "{}: no element where 1% is detectable",
                    c.name
                );
                let t = rng.below(c.tensors.len());
                let k = 1 + rng.below(c.steps);
                let i = rng.below(c.tensors[t].numel);
                if predicted(t, k, i) >= 2.0 {
                    break (t, k, i);
                }
            };
            let bad = replay_expected(
                c,
                dtype,
                metric,
                *tol,
                Some((k, offsets[t].start + i, 1.01)),
            );
            assert!(!bad.passed(), "{bad}");
            let failures: Vec<_> = bad.failures().collect();
            assert_eq!(failures.len(), 1, "{bad}");
            let name = &c.tensors[t].name;
            assert_eq!(failures[0].quantity, format!("params.{name}"));
            let at = failures[0].worst.at.as_ref().unwrap();
            assert_eq!(
                (at.tensor.as_str(), at.step, at.index),
                (name.as_str(), k, i)
            );
            let want = predicted(t, k, i);
            assert!(
                (failures[0].worst.ratio - want).abs() <= 1e-9 * want,
                "{}: ratio {} predicted {want}",
                c.name,
                failures[0].worst.ratio
            );
            let text = bad.to_string();
            assert!(
                text.starts_with("FAIL") && text.contains(&format!("{name}[{i}] after step {k}")),
                "{text}"
            );
        }
    }
}

/// The final-state metric: the expected state scores 0; a 1% change of one entry, a missing
/// state and a uint8 code off by one fail; lengths are checked.
#[test]
fn state_metric_accepts_the_expected_state_and_catches_changes() {
    let c = case("lion_default");
    let run = c.run(Dtype::F64).unwrap();
    let values = |name: &str, key: &str| -> Option<Vec<f64>> {
        match run.final_state.get(name)?.get(key)? {
            StateValue::Number(x) => Some(vec![*x]),
            StateValue::Tensor { data, .. } => Some(data.clone()),
        }
    };
    let ok = c.check_final_state(Dtype::F64, 1e-12, values).unwrap();
    assert_eq!(ok.len(), c.tensors.len());
    assert!(ok.iter().all(|ch| ch.passed() && ch.worst.ratio == 0.0));

    // w2's exp_avg: the largest entry changed by 1%.
    let exp = values("w2", "exp_avg").unwrap();
    let i = (0..exp.len())
        .max_by(|&a, &b| exp[a].abs().total_cmp(&exp[b].abs()))
        .unwrap();
    let checks = c
        .check_final_state(Dtype::F64, 1e-12, |name, key| {
            let mut v = values(name, key)?;
            if name == "w2" {
                v[i] *= 1.01;
            }
            Some(v)
        })
        .unwrap();
    let failed: Vec<_> = checks.iter().filter(|ch| !ch.passed()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].quantity, "state.w2.exp_avg");
    let at = failed[0].worst.at.as_ref().unwrap();
    assert_eq!((at.index, at.key.as_deref()), (i, Some("exp_avg")));
    assert!(failed[0].worst.ratio > 1e8);

    // A replay without the state fails that check.
    let missing = c
        .check_final_state(Dtype::F64, 1e-12, |name, key| {
            (name != "b1").then(|| values(name, key)).flatten()
        })
        .unwrap();
    assert_eq!(missing.iter().filter(|ch| !ch.passed()).count(), 1);

    // uint8 codes compare exactly.
    let q = case("adam8bit_default");
    let qrun = q.run(Dtype::F32).unwrap();
    let codes = &qrun.final_state["w1"]["state1"];
    let StateValue::Tensor { data, .. } = codes else {
        panic!("state1 is not a tensor")
    };
    assert_eq!(
        state_error(0.5, q.steps, "w1", "state1", data, codes)
            .unwrap()
            .ratio,
        0.0
    );
    let mut off = data.clone();
    off[17] = if off[17] < 255.0 {
        off[17] + 1.0
    } else {
        254.0
    };
    let w = state_error(0.5, q.steps, "w1", "state1", &off, codes).unwrap();
    assert!(!w.passed() && w.at.as_ref().unwrap().index == 17);
    assert!(matches!(
        state_error(1e-5, q.steps, "w1", "state1", &data[1..], codes),
        Err(Error::LengthMismatch { .. })
    ));
    // float32 state is compared after casting the expected value to f32.
    let m = &qrun.final_state["w1"]["qmap1"];
    let StateValue::Tensor { data: qmap, .. } = m else {
        panic!()
    };
    let as_f32: Vec<f64> = qmap.iter().map(|&x| f64::from(x as f32)).collect();
    assert_eq!(
        state_error(0.0, q.steps, "w1", "qmap1", &as_f32, m)
            .unwrap()
            .ratio,
        0.0
    );
}

/// Lion from the README (lion-pytorch 0.2.5): per element, p ← p·(1 − lr·wd)
/// (wd/lr0 with `decoupled_wd`); c = β1·m + (1−β1)·g; p ← p − lr·sign(c) with sign(0) = 0;
/// m ← β2·m + (1−β2)·g. In f64, or in f32 with torch's op order.
struct Lion {
    beta1: f64,
    beta2: f64,
    wd: f64,
    decoupled_lr0: Option<f64>,
    m: Vec<f64>,
    /// The README's "wrong variant": momentum updated before taking the sign.
    momentum_first: bool,
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl Lion {
    fn new(c: &Case2) -> Lion {
        let h = &c.hparams;
        let attrs = c.instance_attributes.as_ref().unwrap();
        let decoupled = attrs["decoupled_wd"].as_bool().unwrap();
        Lion {
            beta1: h["betas"][0].as_f64().unwrap(),
            beta2: h["betas"][1].as_f64().unwrap(),
            wd: h["weight_decay"].as_f64().unwrap(),
            decoupled_lr0: decoupled.then(|| attrs["_init_lr"].as_f64().unwrap()),
            m: vec![0.0; c.numel()],
            momentum_first: false,
        }
    }

    fn decay(&self, lr: f64) -> f64 {
        match self.decoupled_lr0 {
            Some(lr0) => 1.0 - lr / lr0 * self.wd,
            None => 1.0 - lr * self.wd,
        }
    }

    fn step_f64(&mut self, lr: f64, p: &mut [f64], g: &[f64]) {
        let decay = self.decay(lr);
        for ((p, m), &g) in p.iter_mut().zip(&mut self.m).zip(g) {
            *p *= decay;
            if self.momentum_first {
                *m = self.beta2 * *m + (1.0 - self.beta2) * g;
            }
            let c = self.beta1 * *m + (1.0 - self.beta1) * g;
            *p -= lr * sign(c);
            if !self.momentum_first {
                *m = self.beta2 * *m + (1.0 - self.beta2) * g;
            }
        }
    }

    /// torch's float32 op order: f32 factors, c = fma(1−β1, g, f32(β1·m)), p = fma(−lr, s, p),
    /// m = fma(1−β2, g, f32(β2·m)).
    fn step_f32(&mut self, lr: f64, p: &mut [f64], g: &[f64]) {
        let decay = self.decay(lr) as f32;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let (c1, c2) = ((1.0 - self.beta1) as f32, (1.0 - self.beta2) as f32);
        for ((p, m), &g) in p.iter_mut().zip(&mut self.m).zip(g) {
            let (mut x, mf, gf) = (*p as f32 * decay, *m as f32, g as f32);
            let c = c1.mul_add(gf, b1 * mf);
            x = (-(lr as f32)).mul_add(sign(f64::from(c)) as f32, x);
            *p = f64::from(x);
            *m = f64::from(c2.mul_add(gf, b2 * mf));
        }
    }
}

fn lion_cases() -> Vec<Case2> {
    let lion: Vec<_> = cases()
        .into_iter()
        .filter(|c| c.algorithm == "lion")
        .collect();
    assert!(lion.len() >= 3, "only {} lion cases", lion.len());
    lion
}

#[test]
fn independent_lion_replays_the_lion_cases_in_f64() {
    for c in lion_cases() {
        let mut lion = Lion::new(&c);
        let report = replay_trajectory(&c, Dtype::F64, &Metric::M1, 1e-12, |_, lr, p, g| {
            lion.step_f64(lr, p, g);
            Ok(())
        })
        .unwrap();
        assert!(report.passed(), "{report}");
        let split: BTreeMap<&str, &[f64]> = c.split(&lion.m).unwrap().into_iter().collect();
        let state = c
            .check_final_state(Dtype::F64, 1e-12, |name, key| {
                (key == "exp_avg").then(|| split[name].to_vec())
            })
            .unwrap();
        assert!(state.iter().all(|ch| ch.passed()), "{}: {state:?}", c.name);

        // The README's mutant (momentum updated before the sign) fails the same replay.
        let mut wrong = Lion::new(&c);
        wrong.momentum_first = true;
        let report = replay_trajectory(&c, Dtype::F64, &Metric::M1, 1e-12, |_, lr, p, g| {
            wrong.step_f64(lr, p, g);
            Ok(())
        })
        .unwrap();
        assert!(!report.passed(), "{}: the wrong Lion passed", c.name);
        assert!(report.worst().unwrap().worst.ratio > 10.0, "{report}");
    }
}

#[test]
fn independent_lion_replays_the_lion_cases_in_f32() {
    for c in lion_cases() {
        let mut lion = Lion::new(&c);
        let report = replay_trajectory(&c, Dtype::F32, &Metric::M1, 1e-5, |_, lr, p, g| {
            lion.step_f32(lr, p, g);
            Ok(())
        })
        .unwrap();
        assert!(report.passed(), "{report}");
        // An f64 stepper in an f32 replay is refused rather than compared.
        let mut f64_lion = Lion::new(&c);
        let err = replay_trajectory(&c, Dtype::F32, &Metric::M1, 1e-5, |_, lr, p, g| {
            f64_lion.step_f64(lr, p, g);
            Ok(())
        });
        assert!(
            matches!(&err, Err(Error::Golden { reason, .. }) if reason.contains("not an f32 value")),
            "{err:?}"
        );
    }
}

#[test]
fn stepper_errors_and_bad_tolerances_are_returned() {
    let c = case("lion_default");
    let r = replay_trajectory(&c, Dtype::F64, &Metric::M1, 1e-12, |k, _, _, _| {
        if k == 3 {
            Err(Error::Optim(fused_optim::Error::Empty { what: "test" }))
        } else {
            Ok(())
        }
    });
    assert!(matches!(
        r,
        Err(Error::Optim(fused_optim::Error::Empty { .. }))
    ));
    for tol in [f64::NAN, -1.0, f64::INFINITY] {
        let r = replay_trajectory(&c, Dtype::F64, &Metric::M1, tol, |_, _, _, _| Ok(()));
        assert!(matches!(r, Err(Error::Golden { .. })), "tol {tol}");
    }
    let r = replay_trajectory(
        &c,
        Dtype::F64,
        &Metric::M3(LrUnit::PerTensor(BTreeMap::new())),
        0.1,
        |_, _, _, _| Ok(()),
    );
    assert!(matches!(r, Err(Error::Golden { .. })));
    // A stepper that does nothing is caught (Lion moves every non-zero-gradient element).
    let idle = replay_trajectory(&c, Dtype::F64, &Metric::M1, 1e-12, |_, _, _, _| Ok(())).unwrap();
    assert!(!idle.passed());
    // A NaN never passes.
    let nan = replay_trajectory(&c, Dtype::F64, &Metric::M1, 1e3, |_, _, p, _| {
        p[5] = f64::NAN;
        Ok(())
    })
    .unwrap();
    assert!(!nan.passed() && nan.checks[0].worst.ratio.is_infinite());
}

/// A change to a case's JSON.
type Mutation = Box<dyn FnOnce(&mut Value)>;

fn mutated(f: impl FnOnce(&mut Value)) -> Result<Case2, Error> {
    let file = dir().join("lion_default.json.gz");
    let mut v = golden::read_json(&file).unwrap();
    f(&mut v);
    v2::parse(Path::new("mutated.json"), &v)
}

fn reason_of(r: Result<Case2, Error>) -> String {
    match r {
        Err(Error::Golden { file, reason }) => {
            assert_eq!(file, "mutated.json");
            reason
        }
        other => panic!("expected a golden error, got {other:?}"),
    }
}

#[test]
fn malformed_files_are_typed_errors() {
    assert!(mutated(|_| {}).is_ok());
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "numel is 7",
            Box::new(|v| v["tensors"][1]["numel"] = 7.into()),
        ),
        (
            "shape",
            Box::new(|v| v["tensors"][0]["shape"] = serde_json::json!([15, 12])),
        ),
        (
            "rows",
            Box::new(|v| {
                v["tensors"][2]["grads"].as_array_mut().unwrap().pop();
            }),
        ),
        (
            "values",
            Box::new(|v| {
                v["tensors"][3]["params0"]
                    .as_array_mut()
                    .unwrap()
                    .push(1.into());
            }),
        ),
        (
            "not a float32 value",
            Box::new(|v| v["tensors"][0]["params0"][4] = 0.1.into()),
        ),
        (
            "not a finite number",
            Box::new(|v| v["tensors"][0]["grads"][2][4] = "x".into()),
        ),
        (
            "missing field `steps`",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("steps");
            }),
        ),
        (
            "appears twice",
            Box::new(|v| v["tensors"][1]["name"] = "w1".into()),
        ),
        (
            "no tensor `c1`",
            Box::new(|v| {
                v["expected"]["float64"]["params"]
                    .as_object_mut()
                    .unwrap()
                    .remove("c1");
            }),
        ),
        (
            "unknown tensor `zz`",
            Box::new(|v| {
                let p = v["expected"]["float32"]["params"]["w1"].clone();
                v["expected"]["float32"]["params"]["zz"] = p;
            }),
        ),
        (
            "neither",
            Box::new(|v| v["expected"] = serde_json::json!({})),
        ),
        (
            "reference.float64",
            Box::new(|v| {
                v["expected"].as_object_mut().unwrap().remove("float64");
            }),
        ),
        (
            "dtype",
            Box::new(|v| {
                v["expected"]["float32"]["final_state"]["w1"]["exp_avg"]["dtype"] = "int4".into()
            }),
        ),
        (
            "data",
            Box::new(|v| {
                v["expected"]["float32"]["final_state"]["w1"]["exp_avg"]["shape"] =
                    serde_json::json!([15, 10])
            }),
        ),
        (
            "neither a number nor a tensor",
            Box::new(|v| v["expected"]["float32"]["final_state"]["w1"]["exp_avg"] = true.into()),
        ),
        (
            "hparams.lr",
            Box::new(|v| {
                v["reference"]["hparams"]
                    .as_object_mut()
                    .unwrap()
                    .remove("lr");
            }),
        ),
        (
            "lr_per_step",
            Box::new(|v| v["lr_per_step"] = serde_json::json!([1e-4, 1e-4])),
        ),
        ("steps` is 0", Box::new(|v| v["steps"] = 0.into())),
        (
            "default_dtype",
            Box::new(|v| v["expected"]["float64"]["default_dtype"] = "float32".into()),
        ),
    ];
    for (needle, f) in cases {
        let reason = reason_of(mutated(f));
        assert!(
            reason.contains(needle),
            "`{reason}` does not mention `{needle}`"
        );
    }
    // uint8 codes outside 0..=255.
    let file = dir().join("adam8bit_default.json.gz");
    let mut v = golden::read_json(&file).unwrap();
    v["expected"]["float32"]["final_state"]["b2"]["state1"]["data"][0] = 256.into();
    let r = v2::parse(Path::new("mutated.json"), &v);
    assert!(reason_of(r).contains("not a uint8 code"));

    // Files that are not JSON, truncated gzip, missing files.
    let tmp = std::env::temp_dir().join(format!("fused-optim-golden-v2-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let bytes = std::fs::read(dir().join("lion_wd.json.gz")).unwrap();
    std::fs::write(tmp.join("cut.json.gz"), &bytes[..1000]).unwrap();
    std::fs::write(tmp.join("text.json"), "{\"schema\": \"optim-golden/2\", ").unwrap();
    for name in ["cut.json.gz", "text.json", "absent.json"] {
        let r = golden::load_any(&tmp.join(name));
        assert!(matches!(r, Err(Error::Golden { .. })), "{name}: {r:?}");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn load_any_tells_the_schemas_apart() {
    let v1 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../golden/v1");
    assert!(matches!(
        golden::load_any(&v1.join("adam_default.json.gz")),
        Ok(Golden::V1(c)) if c.name == "adam_default"
    ));
    assert!(matches!(
        golden::load_any(&dir().join("muon_default.json.gz")),
        Ok(Golden::V2(c)) if c.algorithm == "muon"
    ));
    for index in [v1.join("index.json"), dir().join("index.json")] {
        assert!(matches!(golden::load_any(&index), Ok(Golden::NotACase)));
    }
    // Each schema's own loader declines the other's files.
    assert!(golden::load(&dir().join("lion_wd.json.gz"))
        .unwrap()
        .is_none());
    assert!(v2::load(&v1.join("adam_default.json.gz"))
        .unwrap()
        .is_none());
}
