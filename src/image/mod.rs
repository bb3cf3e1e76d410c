//! Images as wholes: where they live (a registry reference or an OCI image layout,
//! `oci:DIR[:TAG]`), reading their index, manifests, configs and blobs, and writing new ones
//! (blobs first, the manifest last). Used by `convert` and `commit`; knows no layer format.
