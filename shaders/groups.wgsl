// groups.wgsl: parameter groups (GROUPED): the group of every vec4 lane, from a table.

@group(0) @binding(8) var<storage, read> lane_groups: array<u32>;

// The scalars of the group that lane i belongs to.
fn hyper_of(i: u32) -> StepUniform {
    return hps[lane_groups[window.first_lane + i]];
}
