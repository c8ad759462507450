//! The node's one embedded store file (redb) and the thread that owns its writes.
//!
//! Async code never touches redb directly: it sends a job to the store thread and awaits the
//! answer. The thread takes every job that is waiting, runs them all in ONE write transaction and
//! commits once (group commit), so a burst of transaction messages costs one fsync, and no
//! blocking disk I/O ever runs on a tokio worker. A caller's answer is delivered only after the
//! commit is durable: "acknowledged" always means "on disk".

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, ReadTransaction, ReadableDatabase as _, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Redb(#[from] redb::Error),
    #[error("store is shut down")]
    Closed,
    #[error("store commit failed; the write was not kept")]
    NotCommitted,
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
}

macro_rules! redb_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
redb_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Hands the result to the waiting caller; run only after the batch committed.
type Deliver = Box<dyn FnOnce() + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> Result<Deliver, StoreError> + Send>;

/// Most jobs folded into one commit; bounds the latency one commit adds to the first job.
const MAX_BATCH: usize = 256;
/// Jobs that may wait for the store thread; senders wait (asynchronously) beyond this.
const QUEUE_DEPTH: usize = 4096;

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    jobs: mpsc::Sender<Job>,
    // Joined by the last handle's `close`, so a stopping node releases the file cleanly. The
    // daemon may still exit at any point: every acknowledged write is already committed.
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Store {
    /// Opens (or creates) the store file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Arc::new(Database::create(path)?);
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer_db = db.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_db, rx))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the store thread: {e}")))?;
        Ok(Store {
            db,
            jobs,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Finishes every queued write and releases the file. Only the last handle can wait for the
    /// writer; earlier ones just let go of their share.
    pub fn close(self) {
        let Store { db, jobs, writer } = self;
        drop((db, jobs));
        if let Some(writer) = Arc::into_inner(writer) {
            if let Some(handle) = writer.into_inner().ok().flatten() {
                let _ = handle.join();
            }
        }
    }

    /// Runs `f` inside the next group commit and returns its result once the commit is durable.
    pub async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |wtx| {
            let result = f(wtx)?;
            Ok(Box::new(move || {
                let _ = tx.send(result);
            }))
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::NotCommitted)
    }

    /// Queues `f` for the next group commit without waiting for it; `done` gets its result once
    /// the commit is durable, or an error if the write was not kept. Jobs queued by one task
    /// finish in the order they were queued, so an ordered lane costs no wait per job.
    pub async fn submit<R, F, D>(&self, f: F, done: D)
    where
        R: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
        D: FnOnce(Result<R, StoreError>) + Send + 'static,
    {
        let guard = DoneGuard(Some(done), std::marker::PhantomData);
        let job: Job = Box::new(move |wtx| {
            let result = f(wtx)?;
            Ok(Box::new(move || {
                let mut guard = guard;
                guard.finish(Ok(result));
            }))
        });
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job).await {
            // Dropping the job drops its guard, which reports the store closed.
            drop(job);
        }
    }

    /// Runs a read-only `f` on a blocking thread; readers never wait for the writer.
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<R, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db.begin_read()?))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

/// Calls `done` exactly once: with the result, or with "not kept" when the job is dropped
/// unrun (the store shut down, or its batch aborted).
struct DoneGuard<R, D: FnOnce(Result<R, StoreError>)>(Option<D>, std::marker::PhantomData<R>);

impl<R, D: FnOnce(Result<R, StoreError>)> DoneGuard<R, D> {
    fn finish(&mut self, result: Result<R, StoreError>) {
        if let Some(done) = self.0.take() {
            done(result);
        }
    }
}

impl<R, D: FnOnce(Result<R, StoreError>)> Drop for DoneGuard<R, D> {
    fn drop(&mut self) {
        self.finish(Err(StoreError::NotCommitted));
    }
}

fn writer(db: Arc<Database>, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match run_batch(&db, batch.drain(..)) {
            Ok(delivers) => delivers.into_iter().for_each(|d| d()),
            // Dropping the jobs' senders tells every caller in the batch that nothing was kept.
            Err(e) => tracing::error!(error = %e, "store batch aborted; its writes were not kept"),
        }
    }
}

fn run_batch(db: &Database, jobs: impl Iterator<Item = Job>) -> Result<Vec<Deliver>, StoreError> {
    let wtx = db.begin_write()?;
    let delivers = jobs.map(|job| job(&wtx)).collect::<Result<Vec<_>, _>>()?;
    wtx.commit()?;
    Ok(delivers)
}
