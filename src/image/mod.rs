//! Image archives: OCI image layouts and `docker save` archives, read, verified and written.
