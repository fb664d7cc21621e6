//! Layer content: applying layer tars into a mounted layer, and writing a layer's changes as a tar.
