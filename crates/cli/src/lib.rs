//! What the `evergreen` command shares with the end-to-end suite: the
//! demo's narrative (`demo`), the in-process stack behind `evergreen up`
//! and `evergreen demo` (`stack`), and training progress bars
//! (`progress`). The rest of the command lives in the binary.

pub mod demo;
pub mod progress;
pub mod stack;
