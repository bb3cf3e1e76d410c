//! Layer writers: an OCI layer tar stream ▶ eStargz (gzip or zstd members) or zstd:chunked,
//! with its TOC, footer, landmark files and the descriptor annotations readers look for.
