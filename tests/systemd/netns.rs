//! A thread of the test process inside the box's network namespace, running a tokio runtime:
//! whatever binds or connects there (the fake upstreams, the HTTP client) sees the box's
//! loopback, which is the only network the daemon in the box has.
//!
//! setns(2) on a thread moves only that thread, and a socket stays in the namespace it was
//! created in, so the fakes it starts can be driven from the test's own runtime afterwards.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::thread::JoinHandle;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use tokio::sync::oneshot;

/// The box's network namespace, entered by one thread of this process.
pub struct BoxNet {
    /// The runtime on that thread: what is spawned on it binds and connects in the box.
    handle: tokio::runtime::Handle,
    /// Ends the runtime, and with it every fake's task and socket.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BoxNet {
    /// Joins the network namespace of process `pid` (the box's PID 1) on a new thread.
    pub fn enter(pid: u32) -> io::Result<BoxNet> {
        let ns = File::open(format!("/proc/{pid}/ns/net"))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("box-net-{pid}"))
            .spawn(move || {
                let rt = move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(io::Error::from)
                    .and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                    });
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let (stop_tx, stop_rx) = oneshot::channel::<()>();
                let _ = ready_tx.send(Ok((rt.handle().clone(), stop_tx)));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
        let (handle, stop) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the box-net thread ended"))??;
        Ok(BoxNet {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` inside the box's network namespace and gives back its output.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle.spawn(fut).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a task in the box's network namespace: {e}"),
        }
    }
}

impl Drop for BoxNet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
