// copy.wgsl: a plain vec4 copy (grad -> param) with the optimizers' launch geometry: reads
// one buffer, writes one. Reported beside the roofs as the simplest streaming kernel.

struct StepUniform {
    scale: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    // Padding lanes of our own buffers may be overwritten here: this kernel only measures.
    param[i] = pack_lane(load_grad(i));
}
