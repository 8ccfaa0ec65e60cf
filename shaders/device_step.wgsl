// device_step.wgsl: the step counter and the loss scale kept on the device, so that a step
// skipped for inf/NaN gradients needs no read-back: the host never has to learn which steps
// were skipped before it issues the next one. Mirror of src/gpu/device_step.rs.
//
// resolve (before the optimizer kernel, after norm.wgsl's `finish` has set `nonfinite`):
//   calls += 1;  if the step is not skipped: steps += 1;   t = steps
//   Then it completes this step's uniform slot (written by the host with the lr-dependent
//   values) from row t % ROWS of the step table (values that depend on t only, computed on
//   the host in f64, e.g. 1 / sqrt(1 - beta2^t)), word by word according to its class:
//     0 keep     the host's value (t-independent)
//     1 multiply host value (lr) * table value (f(t))      e.g. step_size = lr * (1 / bc1)
//     2 replace  the table value                            e.g. inv_sqrt_bc2, rectified
// update_scale (after the optimizer kernel), GradScaler's rule, when the scaler is on:
//   found inf/NaN:  scale *= backoff_factor; growth_tracker = 0
//   otherwise:      growth_tracker += 1; if growth_tracker == growth_interval:
//                       scale *= growth_factor (if still finite); growth_tracker = 0
//   inv_scale = 1 / scale  (unscales the next step's gradients)

// Words of one step's uniform: MAX_GROUPS (8) Hypers of at most 12 words.
const WORDS: u32 = 96u;
override ROWS: u32 = 1024u;

// GradControl: declared in grad_control.wgsl, prepended by the host.

struct DeviceStep {
    calls: u32,
    steps: u32,
    scaler_on: u32,
    growth_tracker: u32,
    scale: f32,
    growth_factor: f32,
    backoff_factor: f32,
    growth_interval: u32,
}

@group(0) @binding(0) var<storage, read_write> slot: array<u32, WORDS>;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> classes: array<u32, WORDS>;
@group(0) @binding(3) var<storage, read_write> control: GradControl;
@group(0) @binding(4) var<storage, read_write> counter: DeviceStep;

var<workgroup> row: u32;
var<workgroup> skipped: u32;

@compute @workgroup_size(96)
fn resolve(@builtin(local_invocation_index) j: u32) {
    if (j == 0u) {
        let skip = control.skip_nonfinite != 0u && control.nonfinite != 0u;
        counter.calls = counter.calls + 1u;
        if (!skip) {
            counter.steps = counter.steps + 1u;
        }
        row = counter.steps % ROWS;
        skipped = select(0u, 1u, skip);
    }
    workgroupBarrier();
    if (skipped != 0u) {
        return; // the optimizer kernel returns at once: its uniform is not read
    }
    let value = table[row * WORDS + j];
    let word_class = classes[j];
    if (word_class == 1u) {
        slot[j] = bitcast<u32>(bitcast<f32>(slot[j]) * bitcast<f32>(value));
    } else if (word_class == 2u) {
        slot[j] = value;
    }
}

@compute @workgroup_size(1)
fn update_scale() {
    if (counter.scaler_on == 0u) {
        return;
    }
    if (control.nonfinite != 0u) {
        counter.scale = counter.scale * counter.backoff_factor;
        counter.growth_tracker = 0u;
    } else {
        counter.growth_tracker = counter.growth_tracker + 1u;
        if (counter.growth_tracker >= counter.growth_interval) {
            // Grow only to a finite scale (exponent bits not all ones), as PyTorch does.
            let grown = counter.scale * counter.growth_factor;
            if ((bitcast<u32>(grown) & 0x7f800000u) != 0x7f800000u) {
                counter.scale = grown;
            }
            counter.growth_tracker = 0u;
        }
    }
    control.inv_scale = 1.0 / counter.scale;
}
