// groups_none.wgsl: one parameter group (not GROUPED): every lane uses group 0's scalars,
// read once per invocation into `group0` (common.wgsl `main`). No lane table is bound.

fn hyper_of(i: u32) -> StepUniform {
    return group0;
}
