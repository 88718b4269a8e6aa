//! Turns result records into tables and figures.
