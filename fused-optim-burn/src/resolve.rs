//! From a Burn tensor to its storage: (wgpu buffer, byte offset), through Burn's backend
//! primitives: the dispatch tensor -> (fusion: `resolve_tensor_float`, which first runs the
//! tensor's pending operations) -> `CubeTensor` -> `client.get_resource(handle)`.

use burn::backend::wgpu::{CubeTensor, WgpuResource};
use burn::backend::Wgpu;
use burn::tensor::{DType, Tensor};
use cubecl_runtime::storage::ManagedResource;
use cubecl_wgpu::{AutoCompiler, WgpuServer};

use crate::{Error, Result};

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
