//! A small pool of connections for threads that read now and then — LLM workers loading
//! a reply's context, upload workers checking access, the cluster bus repairing a gap —
//! so that a thousand generation workers share a few connections instead of holding one
//! each. At most `size` connections, opened on first use (or by [`Pool::warm`]); a
//! borrower waits for a free one; a connection the database closed is reopened when
//! it is next borrowed.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::db::Db;
use super::StoreError;

type Opener<C> = Box<dyn Fn() -> Result<C, StoreError> + Send + Sync>;

pub struct Pool<C> {
    open: Opener<C>,
    size: usize,
    /// Idle connections, and how many exist (idle or borrowed).
    state: Mutex<(Vec<C>, usize)>,
    freed: Condvar,
}

/// A borrowed connection, returned on drop.
pub struct Pooled<C> {
    pool: Arc<Pool<C>>,
    conn: Option<C>,
}

impl<C: Db> Pool<C> {
    pub fn new(size: usize, open: Opener<C>) -> Arc<Pool<C>> {
        Arc::new(Pool {
            open,
            size: size.max(1),
            state: Mutex::new((Vec::new(), 0)),
            freed: Condvar::new(),
        })
    }

    /// Open every connection now: a burst of first borrowers (a thousand replies starting
    /// together) then waits for a free connection rather than for new ones to open.
    pub fn warm(self: &Arc<Self>) -> Result<(), StoreError> {
        let held: Vec<Pooled<C>> = (0..self.size)
            .map(|_| self.get())
            .collect::<Result<_, _>>()?;
        drop(held);
        Ok(())
    }

    /// A connection: an idle one, a new one while under `size`, else wait for one.
    pub fn get(self: &Arc<Self>) -> Result<Pooled<C>, StoreError> {
        let mut st = self.state.lock();
        loop {
            if let Some(c) = st.0.pop() {
                drop(st);
                if let Err(e) = c.reconnect_if_lost() {
                    let mut st = self.state.lock();
                    st.0.push(c);
                    drop(st);
                    self.freed.notify_one();
                    return Err(e);
                }
                return Ok(Pooled {
                    pool: self.clone(),
                    conn: Some(c),
                });
            }
            if st.1 < self.size {
                st.1 += 1;
                drop(st);
                return match (self.open)() {
                    Ok(c) => Ok(Pooled {
                        pool: self.clone(),
                        conn: Some(c),
                    }),
                    Err(e) => {
                        self.state.lock().1 -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            self.freed.wait(&mut st);
        }
    }
}

impl<C> std::ops::Deref for Pooled<C> {
    type Target = C;
    fn deref(&self) -> &C {
        // Some from creation until drop.
        #[allow(clippy::unwrap_used)]
        self.conn.as_ref().unwrap()
    }
}

impl<C> Drop for Pooled<C> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.state.lock().0.push(c);
            self.pool.freed.notify_one();
        }
    }
}
