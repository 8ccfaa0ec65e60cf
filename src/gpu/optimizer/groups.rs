//! Parameter groups: what the caller gives ([`ParamGroup`]), what the optimizer keeps for
//! each group ([`Group`]: segments, config, host scalars, in one place), the lane-to-group
//! table on the device, and the per-group host state.

use super::{GpuOptimizer, MAX_GROUPS};
use crate::checkpoint::GroupState;
use crate::error::{Error, Result};
use crate::gpu::buffer::FlatParams;
use crate::gpu::groups::ParamGroup;
use crate::optim::HostState;

/// Check groups given to the builder: 1 to [`MAX_GROUPS`] of them, each valid, all of the
/// same optimizer with the same structural options.
pub(crate) fn validate(groups: &[ParamGroup]) -> Result<()> {
    if groups.is_empty() || groups.len() > MAX_GROUPS {
        return Err(Error::GroupCount {
            got: groups.len(),
            max: MAX_GROUPS,
        });
    }
    let first = groups[0].config;
    for g in groups {
        g.config.validate()?;
        if g.config.name() != first.name()
            || g.config.state_names() != first.state_names()
            || g.config.overrides() != first.overrides()
        {
            return Err(Error::InvalidCombination {
                optimizer: first.name(),
                reason: "every parameter group must use the same optimizer with the same \
                         structural options (state tensors, amsgrad, nesterov, centered)",
            });
        }
    }
    Ok(())
}

/// The lane-to-group table on the device: every segment in exactly one group, every segment
/// starting on a vec4 lane; padding lanes follow the segment before them.
pub(super) fn lane_table(params: &FlatParams, groups: &[ParamGroup]) -> Result<wgpu::Buffer> {
    let lanes = crate::dispatch::padded_len(params.len() as u64) as usize / 4;
    // The table is bound whole: refuse one past the device's binding limit before building it
    // (a bind group over it would be a validation error).
    let bytes = crate::dispatch::lane_table_bytes(params.len() as u64);
    let limit = params
        .context()
        .device()
        .limits()
        .max_storage_buffer_binding_size;
    if bytes > limit {
        return Err(Error::BufferTooLarge {
            what: "lane-group table (bound whole)",
            bytes,
            limit,
        });
    }
    let mut lane_group = vec![u32::MAX; lanes];
    for (k, g) in groups.iter().enumerate() {
        for name in &g.segments {
            let seg = params.segment(name)?;
            if seg.offset % 4 != 0 {
                return Err(Error::Segment {
                    name: name.clone(),
                    reason: "does not start on a multiple of 4 elements: build the params \
                             with FlatParamsBuilder::lane_aligned() to use groups",
                });
            }
            let lanes_of_segment = seg.offset / 4..(seg.offset + seg.len()).div_ceil(4);
            for slot in &mut lane_group[lanes_of_segment] {
                if *slot != u32::MAX {
                    return Err(Error::Segment {
                        name: name.clone(),
                        reason: "belongs to two parameter groups",
                    });
                }
                *slot = k as u32;
            }
        }
    }
    if let Some(s) = params
        .segments()
        .iter()
        .find(|s| lane_group[s.offset / 4] == u32::MAX)
    {
        return Err(Error::Segment {
            name: s.name.clone(),
            reason: "belongs to no parameter group",
        });
    }
    // Padding lanes between aligned segments follow the segment before them.
    for lane in 1..lanes {
        if lane_group[lane] == u32::MAX {
            lane_group[lane] = lane_group[lane - 1];
        }
    }
    let ctx = params.context();
    let table = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("fused-optim lane groups"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&table, 0, bytemuck::cast_slice(&lane_group));
    Ok(table)
}

impl GpuOptimizer {
    /// Number of parameter groups (1 without groups).
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Set the learning rate of one parameter group (0 = the first) from the next step on.
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.groups[0].config.validate_lr(lr)?;
        let groups = self.groups.len();
        self.groups
            .get_mut(group)
            .ok_or(Error::GroupIndex {
                index: group,
                groups,
            })?
            .host
            .lr = lr;
        Ok(())
    }

    /// Every group's host state (group 0 first), as the host sees it.
    pub(super) fn group_hosts(&self) -> Vec<HostState> {
        self.groups.iter().map(|g| g.host).collect()
    }

    pub(super) fn set_group_hosts(&mut self, hosts: &[HostState]) {
        for (g, h) in self.groups.iter_mut().zip(hosts) {
            g.host = *h;
        }
    }

    /// Every group's host state at the true step count: read from the device when it keeps
    /// the count (waits), else the host's.
    pub(super) fn true_hosts(&self) -> Result<Vec<HostState>> {
        match &self.device {
            None => Ok(self.group_hosts()),
            Some(d) => {
                let t = d.steps_from(&d.read()?);
                Ok(d.hosts_at(&self.groups, t))
            }
        }
    }

    /// The groups as a checkpoint holds them, with `hosts`: none for a single group (so that
    /// a one-group optimizer and one without groups read each other's files).
    pub(super) fn group_states(&self, hosts: &[HostState]) -> Vec<GroupState> {
        if self.groups.len() == 1 {
            return Vec::new();
        }
        self.groups
            .iter()
            .zip(hosts)
            .map(|(g, host)| GroupState {
                segments: g.segments.clone(),
                config: g.config,
                host: *host,
            })
            .collect()
    }
}
