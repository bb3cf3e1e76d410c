//! `lazysnap convert`: rewrite an image's layers into a lazy format (eStargz, eStargz-zstd,
//! zstd:chunked), optionally with the files a recorded start read placed first.
