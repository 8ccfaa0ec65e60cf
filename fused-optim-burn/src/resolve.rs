//! From a Burn tensor to its storage: (wgpu buffer, byte offset), through Burn's backend
//! primitives: the dispatch tensor -> (fusion: `resolve_tensor_float`, which first runs the
//! tensor's pending operations) -> `CubeTensor` -> `client.get_resource(handle)`.
//!
//! Each of those two calls is a blocking round trip to one of Burn's runner threads (fusion's
//! upstream runner, then cubecl's device runner): about 30 us each on this 2-core host, which
//! for a thousand gradients was most of a step. [`Storage::of_all`] makes two round trips
//! for any number of tensors: it runs the whole batch of calls *on* each runner
//! (`DeviceHandle::exclusive` on the runner of fusion's stage, `ComputeClient::exclusive` on
//! cubecl's), where Burn executes nested calls inline instead of queueing them.

use burn::backend::wgpu::{CubeTensor, WgpuResource};
use burn::backend::Wgpu;
use burn::tensor::{DType, Tensor};
use cubecl_runtime::storage::ManagedResource;
use cubecl_wgpu::{AutoCompiler, WgpuServer};

use crate::{Error, Result};

/// What a tensor to resolve is called in errors: (parameter path, `"the parameter"` or
/// `"its gradient"`).
pub type Named<'a> = (Tensor<1>, &'a str, &'static str);

/// A tensor's storage, held: while it lives the allocation is neither freed, handed out
/// again nor relocated (Burn's guard), so the buffer and offset stay valid until after the
/// submission that uses them.
pub struct Storage {
    resource: ManagedResource<WgpuResource>,
    // Keeps the tensor's handle alive with the guard.
    _tensor: CubeTensor,
}

impl Storage {
    /// Resolve `tensor` (`path` and `what` name it in errors): f32 and contiguous, on Burn's
    /// wgpu backend.
    pub fn of(tensor: Tensor<1>, path: &str, what: &'static str) -> Result<Self> {
        let backend = |reason: String| Error::Backend {
            path: path.to_string(),
            reason,
        };
        let cube = to_cube(tensor).map_err(backend)?;
        check(&cube, path, what)?;
        Self::from_cube(cube, path)
    }

    /// Resolve every tensor of `tensors` (see [`Self::of`]) in two blocking round trips to
    /// Burn's runners instead of two per tensor; the same storages and the same errors as
    /// `of` on each, in order (the first refusal is returned).
    pub fn of_all(tensors: Vec<Named<'_>>) -> Result<Vec<Self>> {
        if tensors.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<(String, &'static str)> = tensors
            .iter()
            .map(|(_, p, w)| (p.to_string(), *w))
            .collect();
        let cubes =
            to_cubes(tensors.into_iter().map(|(t, _, _)| t).collect()).map_err(|(k, reason)| {
                Error::Backend {
                    path: names[k].0.clone(),
                    reason,
                }
            })?;
        for (cube, (path, what)) in cubes.iter().zip(&names) {
            check(cube, path, what)?;
        }
        let client = cubes[0].client.clone();
        let same_client = cubes
            .iter()
            .all(|c| c.client.service_id() == client.service_id());
        if !same_client {
            // Tensors on several devices: one by one.
            return cubes
                .into_iter()
                .zip(&names)
                .map(|(cube, (path, _))| Self::from_cube(cube, path))
                .collect();
        }
        let handles: Vec<_> = cubes.iter().map(|c| c.handle.clone()).collect();
        let inner = client.clone();
        // On cubecl's device runner: each get_resource below runs inline there.
        let resources = client
            .exclusive(move || {
                handles
                    .into_iter()
                    .map(|h| inner.get_resource::<WgpuServer<AutoCompiler>>(h))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| Error::Backend {
                path: names[0].0.clone(),
                reason: format!("Burn's device runner did not run the batch: {e:?}"),
            })?;
        resources
            .into_iter()
            .zip(cubes)
            .zip(&names)
            .map(|((resource, cube), (path, _))| {
                let resource = resource.map_err(|e| Error::Backend {
                    path: path.clone(),
                    reason: format!("Burn did not hand out the storage: {e:?}"),
                })?;
                Ok(Self {
                    resource,
                    _tensor: cube,
                })
            })
            .collect()
    }

    fn from_cube(cube: CubeTensor, path: &str) -> Result<Self> {
        let resource = cube
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(cube.handle.clone())
            .map_err(|e| Error::Backend {
                path: path.to_string(),
                reason: format!("Burn did not hand out the storage: {e:?}"),
            })?;
        Ok(Self {
            resource,
            _tensor: cube,
        })
    }

    /// The wgpu buffer (a memory-pool page, often shared with other tensors).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.resource.resource().buffer
    }

    /// Byte offset of the tensor's first element in [`Self::buffer`].
    pub fn offset(&self) -> u64 {
        self.resource.resource().offset
    }

    /// Submit Burn's pending work on this tensor's stream to the queue (before a
    /// submission of ours on the shared queue that must see it).
    pub fn flush(&self) -> std::result::Result<(), String> {
        self._tensor
            .client
            .flush()
            .map_err(|e| format!("flush: {e:?}"))
    }

    /// Bytes of the allocation from [`Self::offset`] on.
    pub fn size(&self) -> u64 {
        self.resource.resource().size
    }
}

/// An identity of the tensor's current value without asking Burn's servers (fusion: the
/// fusion tensor's id, which a new value — a copy, a load, any operation's output — does
/// not share). `None` without fusion: there every step resolves.
#[cfg(feature = "fusion")]
pub(crate) fn identity(tensor: &Tensor<1>) -> Option<String> {
    tensor
        .clone()
        .try_into_primitive::<Wgpu>()
        .ok()
        .map(|f| f.id.to_string())
}

/// Without fusion: no identity (every step resolves).
#[cfg(not(feature = "fusion"))]
pub(crate) fn identity(_tensor: &Tensor<1>) -> Option<String> {
    None
}

/// f32 and contiguous, or the typed refusal.
fn check(cube: &CubeTensor, path: &str, what: &'static str) -> Result<()> {
    if cube.dtype != DType::F32 {
        return Err(Error::NotF32 {
            path: path.to_string(),
            what,
            dtype: cube.dtype,
        });
    }
    if !cube.is_contiguous() {
        return Err(Error::NotContiguous {
            path: path.to_string(),
            what,
        });
    }
    Ok(())
}

/// A service of our own on the upstream stage (fusion's): a handle to it reaches the runner
/// thread fusion's server lives on, so `exclusive` runs a batch of fusion calls there.
#[cfg(feature = "fusion")]
struct UpstreamRunner;

#[cfg(feature = "fusion")]
impl cubecl_common::device::DeviceService for UpstreamRunner {
    fn init(_device_id: cubecl_common::device::DeviceId) -> Self {
        Self
    }

    fn utilities(&self) -> cubecl_common::device::ServerUtilitiesHandle {
        std::sync::Arc::new(())
    }

    fn stage() -> cubecl_common::device::DeviceServiceStage {
        cubecl_common::device::DeviceServiceStage::Upstream
    }
}

/// The `CubeTensor`s of `tensors` (fusion: their pending operations run first), with one
/// round trip to fusion's runner for all of them; on an error, the index of the tensor.
#[cfg(feature = "fusion")]
fn to_cubes(tensors: Vec<Tensor<1>>) -> std::result::Result<Vec<CubeTensor>, (usize, String)> {
    use burn::backend::wgpu::CubeBackend;
    use cubecl_common::device_handle::DeviceHandle;
    let fusions = tensors
        .into_iter()
        .enumerate()
        .map(|(k, t)| {
            t.try_into_primitive::<Wgpu>().map_err(|e| {
                (
                    k,
                    format!("not a tensor of Burn's wgpu backend (with fusion): {e:?}"),
                )
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let client = fusions[0].client.clone();
    let device_id = client.device().to_id();
    if fusions
        .iter()
        .any(|f| f.client.device().to_id() != device_id)
    {
        // Several devices: one by one.
        return Ok(fusions
            .into_iter()
            .map(|f| {
                let c = f.client.clone();
                c.resolve_tensor_float::<CubeBackend>(f)
            })
            .collect());
    }
    // Operations this thread still holds back go to fusion's queue first (the batch below
    // runs on the runner, where this thread's deferred queue is not visible).
    client.flush_queue();
    DeviceHandle::<UpstreamRunner>::new(device_id)
        .exclusive(move || {
            fusions
                .into_iter()
                .map(|f| {
                    let c = f.client.clone();
                    c.resolve_tensor_float::<CubeBackend>(f)
                })
                .collect()
        })
        .map_err(|e| {
            (
                0,
                format!("Burn's fusion runner did not run the batch: {e:?}"),
            )
        })
}

/// Without fusion: the primitives are the `CubeTensor`s.
#[cfg(not(feature = "fusion"))]
fn to_cubes(tensors: Vec<Tensor<1>>) -> std::result::Result<Vec<CubeTensor>, (usize, String)> {
    tensors
        .into_iter()
        .enumerate()
        .map(|(k, t)| to_cube(t).map_err(|e| (k, e)))
        .collect()
}

#[cfg(feature = "fusion")]
fn to_cube(tensor: Tensor<1>) -> std::result::Result<CubeTensor, String> {
    use burn::backend::wgpu::CubeBackend;
    let fusion = tensor
        .try_into_primitive::<Wgpu>()
        .map_err(|e| format!("not a tensor of Burn's wgpu backend (with fusion): {e:?}"))?;
    let client = fusion.client.clone();
    Ok(client.resolve_tensor_float::<CubeBackend>(fusion))
}

#[cfg(not(feature = "fusion"))]
fn to_cube(tensor: Tensor<1>) -> std::result::Result<CubeTensor, String> {
    tensor
        .try_into_primitive::<Wgpu>()
        .map_err(|e| format!("not a tensor of Burn's wgpu backend: {e:?}"))
}
