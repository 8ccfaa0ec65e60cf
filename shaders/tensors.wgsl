// tensors.wgsl: a kernel over ranges of caller buffers (EXTERNAL): the params of many tensors
// in one bound window of a caller's buffer (binding 2), their gradients in another (binding 3)
// or in the same one (GRAD_IN_PARAM), the state in fused-optim's flat buffers, and a table
// (binding 15) giving every workgroup block its tensor. Appended by the host instead of
// grad_f32.wgsl and groups*.wgsl (src/gpu/shaders.rs); the state accessors add
// `ext_state_delta`. Mirror of src/gpu/tensors/layout.rs (`TensorTable`).
//
// Table words: [block -> entry index, one per block of every dispatch] then, from a
// dispatch's `table_base`, 8 words per entry: param lane (in the dispatch's param window),
// gradient lane (in its gradient window), state lane (in its state window), elements, first
// block, parameter group, 0, 0.

@group(0) @binding(15) var<storage, read> tensor_table: array<u32>;

fn tensor_word(k: u32) -> u32 {
    return tensor_table[k];
}

// Only the live elements of the lane: a tensor's last lane may run into bytes it does not
// own (the caller's, never written).
fn store_param_external(i: u32, p: vec4<f32>) {
    if (all(ext_live)) {
        param[i] = p;
        return;
    }
    if (ext_live.x) {
        param[i].x = p.x;
    }
    if (ext_live.y) {
        param[i].y = p.y;
    }
    if (ext_live.z) {
        param[i].z = p.z;
    }
    if (ext_live.w) {
        param[i].w = p.w;
    }
}

// Never called (no low precision over caller buffers).
fn store_low_param(j: u32, p: vec4<f32>, lane: u32) {}
