//! Python worker processes, from the server's side: the supervisor that spawns, feeds, watches and restarts each
//! worker (`supervisor`), and the wire between the two (`ipc`: frames on a Unix socket, tensors in shared memory).
//! Plain Rust: the worker's own loop, which runs the user's Python, is `python::worker_loop`.

pub mod ipc;
pub mod supervisor;
