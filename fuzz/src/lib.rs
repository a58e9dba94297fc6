//! Shared by the fuzz targets: one current-thread Tokio runtime with paused time (every
//! protocol timeout fires as soon as nothing else can run) for the async parsers.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

/// Runs `future` to completion on the fuzzing runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("a current-thread runtime can always be built")
        })
        .block_on(future)
}
