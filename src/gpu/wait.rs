//! Waiting for a future from blocking code: `pollster` natively; on the web (wasm32), where
//! nothing may block (the browser settles its promises only from its event loop), one poll,
//! and [`crate::Error::WouldBlock`] when the answer is not there yet.

use std::future::Future;

#[cfg(target_arch = "wasm32")]
use crate::error::Error;
use crate::error::Result;

/// The output of `future`, waited for (natively) or polled once (web). `what` names the
/// blocking call in the web's [`crate::Error::WouldBlock`]. What the
/// library's blocking calls are built on; on the web a future that is ready at its first poll
/// (one that never waits for the device) still gives its output.
pub fn block_on<F: Future>(what: &'static str, future: F) -> Result<F::Output> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = what;
        Ok(pollster::block_on(future))
    }
    #[cfg(target_arch = "wasm32")]
    {
        use std::task::{Context, Poll, Waker};
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(out) => Ok(out),
            Poll::Pending => Err(Error::WouldBlock { what }),
        }
    }
}
