//! Chunk cache (being written).
