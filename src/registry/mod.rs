//! Distribution client (being written).
