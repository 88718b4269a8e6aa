//! Turns a run's records into what people read.
//!
//! Reports read only records (`results`), never logs. For now this is the
//! terminal summary table `harness scenario` prints at the end of a run;
//! figures and the HTML report come with the reports issue.

pub mod table;

pub use table::summary_table;
